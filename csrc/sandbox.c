// SPDX-License-Identifier: MIT
/*
 * sandbox.c - --enable-sandbox and --enable-seccomp.
 *
 * The sandbox confines the daemon once it holds every fd it needs (TAP,
 * engine, listeners, API socket): a private mount namespace whose root holds
 * only read-only /etc and /run (plus the directories resolv.conf really
 * lives in, when it is a symlink elsewhere) and an empty tmpfs /tmp, no
 * mount propagation back to the host, every capability dropped but
 * CAP_NET_BIND_SERVICE, and no-new-privs. Without CAP_SYS_ADMIN a new user
 * namespace mapping our own uid/gid is created first, as slirp4netns does.
 *
 * The seccomp filter kills the process on system calls slirpy never needs
 * after start-up: a compromised engine cannot exec, trace, load modules,
 * mount or change namespace. Nothing here runs on the data path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>

#include "slirpy.h"

#define SANDBOX_ROOT "/tmp"
#define OLD_ROOT ".old-root"
#define SL_SANDBOX_MAX_DIRS 18

#if defined(__x86_64__)
#define SL_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SL_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "seccomp filter: add this architecture's AUDIT_ARCH"
#endif

static int fail(char *err, size_t errlen, const char *what)
{
	int e = errno;

	snprintf(err, errlen, "%s: %s", what, strerror(e));
	return -e;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int have_cap(int cap)
{
	struct __user_cap_header_struct hdr = {
		.version = _LINUX_CAPABILITY_VERSION_3
	};
	struct __user_cap_data_struct data[2];

	if (syscall(SYS_capget, &hdr, data) < 0)
		return 0;
	return !!(data[cap / 32].effective & (1u << (cap % 32)));
}

/* Enter a mount namespace we may change; a user namespace first if we have
 * no privilege, mapping only ourselves so that file ownership stays ours. */
static int new_mount_ns(char *err, size_t errlen)
{
	char map[64];
	uid_t uid = getuid();
	gid_t gid = getgid();

	if (have_cap(CAP_SYS_ADMIN)) {
		if (unshare(CLONE_NEWNS) < 0)
			return fail(err, errlen, "sandbox: unshare(CLONE_NEWNS)");
		return 0;
	}
	if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
		return fail(err, errlen, "sandbox: unshare(CLONE_NEWUSER)");
	snprintf(map, sizeof(map), "%u %u 1\n", uid, uid);
	if (write_file("/proc/self/uid_map", map) < 0)
		return fail(err, errlen, "sandbox: uid_map");
	if (write_file("/proc/self/setgroups", "deny\n") < 0 && errno != ENOENT)
		return fail(err, errlen, "sandbox: setgroups");
	snprintf(map, sizeof(map), "%u %u 1\n", gid, gid);
	if (write_file("/proc/self/gid_map", map) < 0)
		return fail(err, errlen, "sandbox: gid_map");
	return 0;
}

static int mkdir_p(const char *path)
{
	char buf[PATH_MAX];
	size_t i;

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -1;
	for (i = 1; buf[i]; i++) {
		if (buf[i] != '/')
			continue;
		buf[i] = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -1;
		buf[i] = '/';
	}
	return mkdir(buf, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

/* Bind @src (already opened as @srcfd, since the tmpfs root may hide it)
 * read-only at @root@src. The remount must keep the flags the kernel locked
 * on the original mount (nosuid, nodev, ...) or it fails in a user
 * namespace. */
static int bind_ro(const char *root, const char *src, int srcfd, char *err,
		   size_t errlen)
{
	char dst[PATH_MAX], via[64];
	struct statvfs sv;
	unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;

	if (snprintf(dst, sizeof(dst), "%s%s", root, src) >= (int)sizeof(dst))
		return -ENAMETOOLONG;
	if (mkdir_p(dst) < 0)
		return fail(err, errlen, "sandbox: mkdir");
	snprintf(via, sizeof(via), "/proc/self/fd/%d", srcfd);
	if (mount(via, dst, NULL, MS_BIND | MS_REC, NULL) < 0) {
		snprintf(err, errlen, "sandbox: bind %s: %s", src,
			 strerror(errno));
		return -errno;
	}
	if (fstatvfs(srcfd, &sv) == 0) {
		if (sv.f_flag & ST_NOSUID)
			flags |= MS_NOSUID;
		if (sv.f_flag & ST_NODEV)
			flags |= MS_NODEV;
		if (sv.f_flag & ST_NOEXEC)
			flags |= MS_NOEXEC;
		if (sv.f_flag & ST_NOATIME)
			flags |= MS_NOATIME;
		if (sv.f_flag & ST_NODIRATIME)
			flags |= MS_NODIRATIME;
		if (sv.f_flag & ST_RELATIME)
			flags |= MS_RELATIME;
	}
	if (mount(NULL, dst, NULL, flags, NULL) < 0) {
		snprintf(err, errlen, "sandbox: read-only %s: %s", src,
			 strerror(errno));
		return -errno;
	}
	return 0;
}

static int drop_caps(char *err, size_t errlen)
{
	struct __user_cap_header_struct hdr = {
		.version = _LINUX_CAPABILITY_VERSION_3
	};
	struct __user_cap_data_struct data[2] = { { 0 } };
	int cap;

	for (cap = 0; cap <= CAP_LAST_CAP; cap++)
		if (cap != CAP_NET_BIND_SERVICE &&
		    prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL &&
		    errno != EPERM)
			return fail(err, errlen, "sandbox: drop bounding set");
	data[0].effective = data[0].permitted = data[0].inheritable =
		1u << CAP_NET_BIND_SERVICE;
	if (syscall(SYS_capset, &hdr, data) < 0 && errno != EPERM)
		return fail(err, errlen, "sandbox: capset");
	return 0;
}

/**
 * sl_sandbox_apply() - confine the calling process (must be single-threaded
 * when it has to create a user namespace).
 * @extra: directories to make visible read-only besides /etc and /run
 *         (where resolv.conf really lives), @nextra of them
 * @err: one line explaining a failure
 *
 * Return: 0 or -errno.
 */
int sl_sandbox_apply(const char *const *extra, int nextra, char *err,
		     size_t errlen)
{
	const char *dirs[SL_SANDBOX_MAX_DIRS];
	int fds[SL_SANDBOX_MAX_DIRS];
	char tmp[PATH_MAX];
	int i, n = 0, nopen = 0, r;

	dirs[n++] = "/etc";
	dirs[n++] = "/run";
	for (i = 0; i < nextra && n < SL_SANDBOX_MAX_DIRS; i++)
		/* Under /etc or /run it is visible already. */
		if (strncmp(extra[i], "/etc/", 5) && strncmp(extra[i], "/run/", 5))
			dirs[n++] = extra[i];
	r = new_mount_ns(err, errlen);
	if (r < 0)
		return r;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return fail(err, errlen, "sandbox: make / private");
	/* Open the sources first: the tmpfs root below may hide them. */
	for (i = 0; i < n; i++) {
		fds[i] = open(dirs[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (fds[i] < 0) {
			snprintf(err, errlen, "sandbox: open %s: %s", dirs[i],
				 strerror(errno));
			r = -errno;
			goto out;
		}
		nopen++;
	}
	if (mount("tmpfs", SANDBOX_ROOT, "tmpfs", MS_NOSUID | MS_NODEV,
		  "mode=0755") < 0) {
		r = fail(err, errlen, "sandbox: tmpfs root");
		goto out;
	}
	for (i = 0; i < n; i++) {
		r = bind_ro(SANDBOX_ROOT, dirs[i], fds[i], err, errlen);
		if (r < 0)
			goto out;
	}
	while (nopen)
		close(fds[--nopen]);
	snprintf(tmp, sizeof(tmp), "%s/tmp", SANDBOX_ROOT);
	if (mkdir(tmp, 01777) < 0 && errno != EEXIST)
		return fail(err, errlen, "sandbox: mkdir /tmp");
	snprintf(tmp, sizeof(tmp), "%s/%s", SANDBOX_ROOT, OLD_ROOT);
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return fail(err, errlen, "sandbox: mkdir old root");
	if (chdir(SANDBOX_ROOT) < 0)
		return fail(err, errlen, "sandbox: chdir");
	if (syscall(SYS_pivot_root, ".", OLD_ROOT) < 0)
		return fail(err, errlen, "sandbox: pivot_root");
	if (chdir("/") < 0)
		return fail(err, errlen, "sandbox: chdir /");
	if (umount2("/" OLD_ROOT, MNT_DETACH) < 0)
		return fail(err, errlen, "sandbox: detach old root");
	rmdir("/" OLD_ROOT);
	if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "mode=1777") < 0)
		return fail(err, errlen, "sandbox: tmpfs /tmp");
	r = drop_caps(err, errlen);
	if (r < 0)
		return r;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return fail(err, errlen, "sandbox: no_new_privs");
	return 0;
out:
	while (nopen)
		close(fds[--nopen]);
	return r;
}

#define KILL_IF(nr)                                                          \
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1),                     \
	BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)

/**
 * sl_seccomp_apply() - kill the process on any system call that only an
 * attacker would make once slirpy is running. Applies to all threads.
 * Return: 0 or -errno (@err says which step failed).
 */
int sl_seccomp_apply(char *err, size_t errlen)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SL_AUDIT_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
		/* x32 system calls would bypass the numbers below. */
		BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
#endif
		KILL_IF(__NR_execve),
		KILL_IF(__NR_execveat),
		KILL_IF(__NR_ptrace),
		KILL_IF(__NR_process_vm_readv),
		KILL_IF(__NR_process_vm_writev),
		KILL_IF(__NR_pidfd_open),
		KILL_IF(__NR_pidfd_getfd),
		KILL_IF(__NR_pidfd_send_signal),
		KILL_IF(__NR_init_module),
		KILL_IF(__NR_finit_module),
		KILL_IF(__NR_delete_module),
		KILL_IF(__NR_mount),
		KILL_IF(__NR_umount2),
		KILL_IF(__NR_pivot_root),
		KILL_IF(__NR_chroot),
		KILL_IF(__NR_open_tree),
		KILL_IF(__NR_move_mount),
		KILL_IF(__NR_fsopen),
		KILL_IF(__NR_fsconfig),
		KILL_IF(__NR_fsmount),
		KILL_IF(__NR_fspick),
		KILL_IF(__NR_mount_setattr),
		KILL_IF(__NR_open_by_handle_at),
		KILL_IF(__NR_kexec_load),
		KILL_IF(__NR_kexec_file_load),
		KILL_IF(__NR_reboot),
		KILL_IF(__NR_setns),
		KILL_IF(__NR_unshare),
		KILL_IF(__NR_prctl),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {
		.len = sizeof(filter) / sizeof(filter[0]),
		.filter = filter,
	};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return fail(err, errlen, "seccomp: no_new_privs");
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
		    SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
		return fail(err, errlen, "seccomp: install filter");
	return 0;
}
