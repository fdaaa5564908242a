// SPDX-License-Identifier: MIT
/*
 * nssock.c - sockets made inside the container's namespaces by a short-lived
 * clone() child, so that slirpy needs no second, long-lived process for it.
 *
 * A socket keeps the network namespace it was created in. Namespaces and
 * credentials are per task, so a child made with
 * CLONE_VM | CLONE_VFORK | CLONE_FILES can setns() into the container's
 * user namespace (allowed: without CLONE_FS it has its own fs_struct, and
 * without CLONE_THREAD it is a thread group of one) and network namespace,
 * call socket(), and _exit(): the shared fd table hands the sockets to us,
 * the shared memory their numbers, and our own task never changes
 * namespace. CLONE_VFORK suspends the calling thread until the child is
 * gone, so the child may run on a stack in the caller's frame.
 *
 * All signals are blocked around the clone: the child shares our memory,
 * and a handler of the parent's (Python's, which writes to a wake-up fd)
 * running in it would race with the parent. The child has exit signal 0
 * (no SIGCHLD reaches the daemon's child watchers) and is reaped here with
 * __WCLONE, which no waitpid(-1) of the caller's can take from us.
 *
 * It must not be used once slirpy is confined (the seccomp filter kills on
 * setns; the sandbox's user namespace holds no capability over the
 * container's): splice.c's namespace helper remains for that case.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>

#include "nssock.h"

/* The child's stack: setns(), socket() and a callback, no more. */
#define SL_NS_STACK (32 * 1024)

/* What the child is to do, and what it did (shared memory). */
struct sl_ns_job {
	int netfd, userfd;
	int (*fn)(void *arg);
	void *arg;
	int err;		/* 0, or the errno of a failed setns() */
};

static int ns_child(void *p)
{
	struct sl_ns_job *j = p;

	if (j->userfd >= 0 && setns(j->userfd, CLONE_NEWUSER) < 0) {
		j->err = errno;
		_exit(1);
	}
	if (setns(j->netfd, CLONE_NEWNET) < 0) {
		j->err = errno;
		_exit(1);
	}
	j->fn(j->arg);
	_exit(0);
}

/**
 * sl_ns_run() - run @fn(@arg) in a child that joined the user namespace
 * @userfd (-1: stay in ours) and the network namespace @netfd, sharing our
 * memory and fd table; return once it has exited. @fn must only make
 * sockets and record results in @arg (no allocation, no stdio, no locks).
 *
 * Return: 0 when @fn ran, or -errno (clone() or setns() failed).
 */
int sl_ns_run(int netfd, int userfd, int (*fn)(void *arg), void *arg)
{
	_Alignas(16) char stack[SL_NS_STACK];
	struct sl_ns_job j = {
		.netfd = netfd, .userfd = userfd, .fn = fn, .arg = arg,
	};
	sigset_t all, old;
	int st, saved;
	pid_t pid;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	pid = clone(ns_child, stack + sizeof(stack),
		    CLONE_VM | CLONE_VFORK | CLONE_FILES, &j);
	saved = errno;
	if (pid > 0)
		while (waitpid(pid, &st, __WCLONE) < 0 && errno == EINTR)
			;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0)
		return -saved;
	return j.err ? -j.err : 0;
}

struct sl_ns_tcp_job {
	int family;
	int *fds;
	int n, made;
	int err;		/* errno of the socket() that failed */
};

static int make_tcp(void *p)
{
	struct sl_ns_tcp_job *t = p;

	for (t->made = 0; t->made < t->n; t->made++) {
		int fd = socket(t->family, SOCK_STREAM | SOCK_NONBLOCK |
					   SOCK_CLOEXEC, IPPROTO_TCP);

		if (fd < 0) {
			t->err = errno;
			break;
		}
		t->fds[t->made] = fd;
	}
	return 0;
}

/**
 * sl_ns_make_tcp() - up to @n (at most SL_NS_BATCH_MAX) non-blocking TCP
 * sockets of @family (4 or 6) in the network namespace @netfd, in @fds.
 *
 * Return: how many were made (at least 1), or -errno.
 */
int sl_ns_make_tcp(int netfd, int userfd, int family, int *fds, int n)
{
	struct sl_ns_tcp_job t = {
		.family = family == 4 ? AF_INET : AF_INET6, .fds = fds,
		.n = n > SL_NS_BATCH_MAX ? SL_NS_BATCH_MAX : n,
	};
	int r;

	if ((family != 4 && family != 6) || n <= 0)
		return -EINVAL;
	r = sl_ns_run(netfd, userfd, make_tcp, &t);
	if (r < 0)
		return r;
	return t.made ? t.made : -(t.err ? t.err : EMFILE);
}
