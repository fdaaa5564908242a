/* SPDX-License-Identifier: MIT */
/*
 * nssock.h - making sockets inside another network namespace (nssock.c)
 * without a helper process: a short-lived clone() child that shares our
 * memory and fd table joins the namespaces, makes the sockets, and exits.
 *
 * Contract. nssock.c owns only that child: it never keeps a task, never
 * changes the calling task's namespaces or credentials, and touches no
 * engine state. Callers keep the namespace fds open (opened before any
 * confinement: after --enable-sandbox/--enable-seccomp setns() is not
 * possible and the namespace helper of splice.c is the only way).
 */
#ifndef SLIRPY_NSSOCK_H
#define SLIRPY_NSSOCK_H

/* Sockets one sl_ns_make_tcp() call can make at most. */
#define SL_NS_BATCH_MAX 32

int sl_ns_run(int netfd, int userfd, int (*fn)(void *arg), void *arg);
int sl_ns_make_tcp(int netfd, int userfd, int family, int *fds, int n);

#endif /* SLIRPY_NSSOCK_H */
