// SPDX-License-Identifier: MIT
/*
 * sys.c - the system calls Python 3.11 does not wrap: setns(2), opening
 * a TAP with TUNSETIFF / TUNSETOFFLOAD (both called from the forked
 * namespace helper), an inotify watch (the daemon's netns-gone watch) and
 * handing freed heap back to the kernel. Nothing here touches the engine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>

#include "slirpy.h"

/* Linux 6.2 added UDP segmentation offload to the TAP; older headers lack it. */
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

/**
 * sl_release_free_memory() - return the C heap's free pages to the kernel.
 *
 * Start-up (imports, the namespace's configuration) frees more than it
 * keeps, and glibc holds the freed top of the heap resident: ~1.4 MiB of
 * every idle stack process (one per container), measured with malloc_trim.
 * Called once the daemon is ready; a no-op without glibc.
 */
void sl_release_free_memory(void)
{
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

/* Return: 0 or -errno. */
int sl_setns(int fd, int nstype)
{
	return setns(fd, nstype) < 0 ? -errno : 0;
}

/**
 * sl_inotify_watch() - a non-blocking inotify fd watching @path for @mask.
 *
 * Return: the fd, or -errno (from inotify_init1 or inotify_add_watch).
 */
int sl_inotify_watch(const char *path, uint32_t mask)
{
	int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC), e;

	if (fd < 0)
		return -errno;
	if (inotify_add_watch(fd, path, mask) < 0) {
		e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

/**
 * sl_tun_open() - open (or attach to) the TAP @name in the current netns.
 * @vnet_hdr: request IFF_VNET_HDR (frames carry a struct virtio_net_hdr)
 * @offload: announce checksum, TSO4/6 and (where the kernel has it) USO4/6
 *           offload to the guest's kernel
 * @err: on failure, a one-line explanation of what to do
 *
 * Return: a non-blocking fd, or -errno.
 */
int sl_tun_open(const char *name, int vnet_hdr, int offload, char *err,
		size_t errlen)
{
	struct ifreq ifr;
	int fd, e;

	fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		e = errno;
		if (e == ENOENT)
			snprintf(err, errlen, "/dev/net/tun does not exist: "
				 "load the tun module (modprobe tun) or create "
				 "the device node (mknod /dev/net/tun c 10 200)");
		else
			snprintf(err, errlen, "cannot open /dev/net/tun: %s "
				 "(it must be readable and writable by this "
				 "user: chmod 0666 /dev/net/tun)", strerror(e));
		return -e;
	}
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0);
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		e = errno;
		snprintf(err, errlen, "cannot create or attach TAP device %s: "
			 "%s", name, strerror(e));
		close(fd);
		return -e;
	}
	/* USO first; a kernel before 6.2 refuses the unknown bits with
	 * EINVAL, and then the guest simply never sends UDP GSO frames. */
	if (vnet_hdr && offload &&
	    ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 |
		  TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6) < 0 &&
	    ioctl(fd, TUNSETOFFLOAD,
		  TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) < 0) {
		e = errno;
		snprintf(err, errlen, "cannot enable offloads on %s: %s "
			 "(try --disable-offload)", name, strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}
