// SPDX-License-Identifier: MIT
/*
 * splice.c - spliced forwarded ports: host socket <-> pipe <-> socket in the
 * guest's network namespace, moved by splice(2), bypassing the TAP.
 *
 * A forward marked "splice" (sl_engine_set_listener_splice) is accepted
 * by tcp.c, which hands the connection here when sl_splice_wants() says
 * so (always for SL_LM_SPLICE, for loopback peers in SL_LM_SPLIT). For
 * each such host connection the engine
 * takes a TCP socket of the guest's network namespace from a small pool
 * that it refills in batches of SL_NS_POOL through nssock.c (a short-lived
 * clone() child that joins the container's namespaces, makes the sockets
 * and exits: sl_engine_set_ns_fds), and connects it at once.
 *
 * Once slirpy is confined (--enable-sandbox/--enable-seccomp) setns() is
 * impossible, so there the engine instead asks the namespace helper (a
 * process slirpy forked into the container's user + network namespaces
 * before confining itself; sl_ns_helper_serve below is its whole life)
 * for a TCP socket: one request byte (the address family) over a
 * SOCK_SEQPACKET socketpair, one reply byte (0 = ok) with the socket as
 * SCM_RIGHTS. A socket keeps the namespace it was created in, so the
 * engine's non-blocking connect() to the guest's own address reaches the
 * guest's loopback-like local path, and the guest sees the connection come
 * from its own address (not N+2 as through the TAP). A forward given a
 * splice address (sl_engine_set_listener_splice_addr: pasta's
 * --host-lo-to-ns-lo sets the namespace's loopback) connects there
 * instead, and the guest sees that address.
 *
 * SL_LM_TO_HOST_LO (pasta's -T) turns this around: the listener is a
 * socket of the guest's netns (bound to its loopback; the helper can make
 * it, see sl_ns_helper_serve) and each connection is relayed to a socket
 * the engine makes itself, in the host's netns, connected to the host's
 * loopback at the forward's guest port. No helper round trip.
 *
 * Replies are matched to requests in order (a FIFO of accepted host fds).
 * The helper lives inside the container's namespaces, so its replies are
 * checked like any other input: one fd, a TCP stream socket of the right
 * family; anything else is dropped and counted.
 *
 * Data: two non-blocking pipes per connection, edge-triggered epoll on both
 * sockets, each event pumps both directions until EAGAIN (or a budget, then
 * the socket is re-armed). Pipes start at the default size and grow once,
 * when a transfer first fills one. A read of 0 (FIN) becomes shutdown(SHUT_WR) on
 * the other socket once its pipe is empty; an error on either side closes
 * both with SO_LINGER 0, so a reset reaches the other peer as a reset. No
 * Python runs per connection or per chunk; nothing here allocates per chunk.
 *
 * Caps: a spliced connection holds 6 fds and takes SL_SPLICE_FDS slots of
 * the TCP flow cap; pending and connecting ones count as half-open. The
 * contract is in splice.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include "internal.h"
#include "nssock.h"

#define SL_SPLICE_PENDING 64
#define SL_SPLICE_PIPE_SZ (256 * 1024)
#define SL_SPLICE_ROUNDS 16	/* pump rounds per event before re-arming */
#define SL_SPLICE_ACCEPTS 64	/* helper replies per event */
#define SL_NS_POOL 8		/* namespace sockets made per refill */

/* connection flags */
#define SP_CONNECTING 0x01	/* connect() toward the guest in progress */
#define SP_HOST_EOF 0x02	/* the host client sent FIN */
#define SP_NS_EOF 0x04		/* the guest sent FIN */
#define SP_NS_SHUT 0x08		/* FIN passed on to the guest */
#define SP_HOST_SHUT 0x10	/* FIN passed on to the host client */

/**
 * struct sl_splice - one spliced connection.
 * @hn: pipe host -> guest ([0] read end, [1] write end); @nh: guest -> host
 * @in_hn, @in_nh: bytes sitting in each pipe
 */
struct sl_splice {
	int hfd, nfd;
	int hn[2], nh[2];
	uint32_t in_hn, in_nh;
	uint32_t cap_hn, cap_nh;
	bool grown_hn, grown_nh;	/* F_SETPIPE_SZ tried */
	uint64_t last_ns;	/* last byte moved (idle expiry) */
	uint32_t gen;
	uint32_t next_free;
	uint16_t flags;
	bool used;
};

/* An accepted host connection waiting for its socket from the helper. */
struct sl_splice_pending {
	int hfd;
	uint32_t slot;		/* listener slot ... */
	uint32_t id;		/* ... still holding this forward id */
};

struct sl_splice_tab {
	int helper;		/* socket to the namespace helper, -1: gone */
	int netfd, userfd;	/* the guest's namespaces (-1: none) */
	int pool[2][SL_NS_POOL];	/* ready namespace sockets: [0] v4, [1] v6 */
	int npool[2];
	struct sl_splice *conn;
	uint32_t nmax, free_head, nused;
	struct sl_splice_pending pend[SL_SPLICE_PENDING];
	uint32_t phead, pcount;
};

static uint64_t conn_tag(const struct sl_splice_tab *t,
			 const struct sl_splice *c, int ns_side)
{
	return ((uint64_t)SL_TAG_SPLICE << 56) |
	       ((uint64_t)(c->gen & 0x7fffff) << 33) |
	       ((uint64_t)ns_side << 32) | (uint32_t)(c - t->conn);
}

/* Close @fd so that its peer sees a reset, not a FIN. */
static void rst_close(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

static void close_pipe(int p[2])
{
	if (p[0] >= 0)
		close(p[0]);
	if (p[1] >= 0)
		close(p[1]);
	p[0] = p[1] = -1;
}

static void release_slot(struct sl_engine *e)
{
	e->flows.n_splice_slots -= SL_SPLICE_FDS;
}

/**
 * conn_close() - close both sockets and the pipes of @c, free it.
 * @rst: the peers see a reset (an error or a refusal on the other side)
 */
static void conn_close(struct sl_engine *e, struct sl_splice *c, bool rst)
{
	struct sl_splice_tab *t = e->splice.tab;

	if (rst) {
		rst_close(c->hfd);
		rst_close(c->nfd);
	} else {
		close(c->hfd);
		close(c->nfd);
	}
	close_pipe(c->hn);
	close_pipe(c->nh);
	if (c->flags & SP_CONNECTING)
		e->flows.n_half_open--;
	release_slot(e);
	c->used = false;
	c->gen++;
	c->next_free = t->free_head;
	t->free_head = (uint32_t)(c - t->conn);
	t->nused--;
	sl_count(e, SL_C_splice_closed);
}

/**
 * sl_splice_tab_init() - allocate the connection table if not yet done
 * (the namespace helper's socket, and SL_LM_TO_HOST_LO listeners, need it).
 * Return: 0 or -ENOMEM.
 */
int sl_splice_tab_init(struct sl_engine *e)
{
	struct sl_splice_tab *t = e->splice.tab;
	uint32_t i;

	if (t)
		return 0;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->nmax = e->cfg.max_tcp_flows / SL_SPLICE_FDS;
	if (!t->nmax)
		t->nmax = 1;
	t->conn = calloc(t->nmax, sizeof(*t->conn));
	if (!t->conn) {
		free(t);
		return -ENOMEM;
	}
	for (i = 0; i < t->nmax; i++)
		t->conn[i].next_free = i + 1 < t->nmax ? i + 1 : SL_NIL;
	t->free_head = 0;
	t->helper = -1;
	t->netfd = t->userfd = -1;
	e->splice.tab = t;
	return 0;
}

/**
 * sl_engine_set_ns_helper() - hand the engine the socket to the namespace
 * helper (SOCK_SEQPACKET; the engine owns and closes it). Spliced forwards
 * need it. Allocates the connection table on first use.
 *
 * Return: 0, -EBUSY if a live helper is already set, or -errno.
 */
int sl_engine_set_ns_helper(struct sl_engine *e, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
	int r;

	if (e->splice.tab && e->splice.tab->helper >= 0)
		return -EBUSY;
	r = sl_splice_tab_init(e);
	if (r < 0)
		return r;
	ev.data.u64 = (uint64_t)SL_TAG_NS_HELPER << 56;
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	e->splice.tab->helper = fd;
	return 0;
}

/* A namespace socket of @family (4/6) from the pool (refilled when empty),
 * or -errno. */
static int pool_take(struct sl_splice_tab *t, int family)
{
	int k = family == 4 ? 0 : 1, n;

	if (!t->npool[k]) {
		n = sl_ns_make_tcp(t->netfd, t->userfd, family, t->pool[k],
				   SL_NS_POOL);
		if (n < 0)
			return n;
		t->npool[k] = n;
	}
	return t->pool[k][--t->npool[k]];
}

/**
 * sl_engine_set_ns_fds() - let the engine make its spliced forwards'
 * sockets in the guest's namespaces itself (nssock.c), without a helper
 * process: @netfd is the network namespace, @userfd the user namespace to
 * join first (-1: none). Tries it once (a first batch of IPv4 sockets)
 * before taking the fds; the engine owns them on success only. Not
 * possible once slirpy is confined (see sl_engine_set_ns_helper).
 *
 * Return: 0, -EBUSY if already set, or the -errno of the first try.
 */
int sl_engine_set_ns_fds(struct sl_engine *e, int netfd, int userfd)
{
	struct sl_splice_tab *t;
	int r;

	if (netfd < 0)
		return -EBADF;
	r = sl_splice_tab_init(e);
	if (r < 0)
		return r;
	t = e->splice.tab;
	if (t->netfd >= 0)
		return -EBUSY;
	r = sl_ns_make_tcp(netfd, userfd, 4, t->pool[0], SL_NS_POOL);
	if (r < 0)
		return r;
	t->npool[0] = r;
	t->netfd = netfd;
	t->userfd = userfd;
	return 0;
}

/* The helper is gone: refuse what waits for it, keep live connections. */
static void helper_gone(struct sl_engine *e)
{
	struct sl_splice_tab *t = e->splice.tab;

	close(t->helper);	/* also leaves the epoll set */
	t->helper = -1;
	while (t->pcount) {
		rst_close(t->pend[t->phead].hfd);
		t->phead = (t->phead + 1) % SL_SPLICE_PENDING;
		t->pcount--;
		e->flows.n_half_open--;
		release_slot(e);
		sl_count(e, SL_C_drop_splice_no_helper);
	}
	sl_notice(e, "the namespace helper exited: spliced forwards refuse "
		     "new connections");
}

/**
 * sl_splice_wants() - whether the connection tcp.c accepted from @sa on
 * @l is relayed here (true) or through the TAP as a flow (false): the
 * listener's mode decides, and in SL_LM_SPLIT mode the peer (loopback
 * peers are spliced, others keep their address through the TAP).
 */
bool sl_splice_wants(const struct sl_listener *l, const void *sa)
{
	switch (l->mode) {
	case SL_LM_SPLICE:
	case SL_LM_TO_HOST_LO:
		return true;
	case SL_LM_SPLIT:
		return sl_sockaddr_is_loopback(sa);
	default:
		return false;
	}
}

/**
 * sl_engine_set_listener_splice_addr() - where the spliced connections of
 * the TCP forward @id go: the namespace helper's socket connects to @addr
 * (@family 4 or 6, the forward's own family) at the forward's guest port
 * instead of to its guest address. pasta's --host-lo-to-ns-lo passes the
 * namespace's 127.0.0.1 / ::1, so host-loopback clients of a -t port reach
 * a guest server bound to loopback and appear from it; clients that take
 * the TAP path (SL_LM_SPLIT's remote peers) keep going to the guest
 * address. A NULL @addr goes back to the guest address. Applies to
 * connections accepted from then on (a pending one reads it when the
 * helper's socket arrives).
 *
 * Return: 0, -ENOENT (no such forward), -EPROTONOSUPPORT (not TCP),
 * -EAFNOSUPPORT (@family is not the forward's).
 */
int sl_engine_set_listener_splice_addr(struct sl_engine *e, uint32_t id,
				       const uint8_t *addr, int family)
{
	int i;

	for (i = 0; i < SL_MAX_LISTENERS; i++) {
		struct sl_listener *l = &e->listeners[i];

		if (!l->used || l->id != id)
			continue;
		if (l->proto != SL_TCP)
			return -EPROTONOSUPPORT;
		if (!addr) {
			l->has_splice_addr = false;
			return 0;
		}
		if (family != l->family)
			return -EAFNOSUPPORT;
		memset(l->splice_addr, 0, sizeof(l->splice_addr));
		memcpy(l->splice_addr, addr, family == 4 ? 4 : 16);
		l->has_splice_addr = true;
		return 0;
	}
	return -ENOENT;
}

/* Room for one more connection (caps as for TCP flows)? Counts a refusal. */
static bool room_for_one(struct sl_engine *e)
{
	struct sl_splice_tab *t = e->splice.tab;

	if (e->flows.n_half_open >= e->cfg.max_half_open ||
	    t->pcount == SL_SPLICE_PENDING) {
		sl_count(e, SL_C_drop_half_open_cap);
		return false;
	}
	if (e->flows.n_by_kind[SL_FLOW_TCP] + e->flows.n_splice_slots +
		    SL_SPLICE_FDS > e->cfg.max_tcp_flows ||
	    t->nused + t->pcount >= t->nmax) {
		sl_count(e, SL_C_drop_flow_cap);
		return false;
	}
	return true;
}

static void conn_start(struct sl_engine *e, int hfd, int nfd, int family,
		       const uint8_t *daddr, uint16_t dport);

/* SL_LM_TO_HOST_LO: @fd came from the guest's netns; relay it to the
 * host's loopback at the forward's port through a socket made here. */
static void take_to_host_lo(struct sl_engine *e, struct sl_listener *l,
			    int fd)
{
	static const uint8_t lo4[4] = { 127, 0, 0, 1 };
	static const uint8_t lo6[16] = { [15] = 1 };
	int nfd;

	if (!room_for_one(e)) {
		rst_close(fd);
		return;
	}
	nfd = socket(l->family == 4 ? AF_INET : AF_INET6,
		     SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
	if (nfd < 0) {
		sl_count(e, SL_C_drop_socket_error);
		rst_close(fd);
		return;
	}
	e->flows.n_half_open++;
	e->flows.n_splice_slots += SL_SPLICE_FDS;
	conn_start(e, fd, nfd, l->family, l->family == 4 ? lo4 : lo6, l->gport);
}

/* Relay @fd through a namespace socket of the pool, connected at once. */
static void take_from_pool(struct sl_engine *e, struct sl_listener *l,
			   int fd)
{
	int nfd;

	if (!room_for_one(e)) {
		rst_close(fd);
		return;
	}
	nfd = pool_take(e->splice.tab, l->family);
	if (nfd < 0) {
		sl_count(e, SL_C_drop_socket_error);
		rst_close(fd);
		return;
	}
	e->flows.n_half_open++;
	e->flows.n_splice_slots += SL_SPLICE_FDS;
	conn_start(e, fd, nfd, l->family,
		   l->has_splice_addr ? l->splice_addr : l->gaddr, l->gport);
}

/**
 * sl_splice_take() - relay the connection @fd that tcp.c accepted on @l
 * (sl_splice_wants() said so): SL_LM_TO_HOST_LO connects to the host's
 * loopback at once; the other modes take a socket of the guest's netns
 * from the pool (sl_engine_set_ns_fds) or, without one, ask the namespace
 * helper for it and wait. Takes @fd in every case.
 */
void sl_splice_take(struct sl_engine *e, struct sl_listener *l, int fd)
{
	struct sl_splice_tab *t = e->splice.tab;
	uint8_t req = (uint8_t)l->family;

	if (t && l->mode == SL_LM_TO_HOST_LO) {
		take_to_host_lo(e, l, fd);
		return;
	}
	if (t && t->netfd >= 0) {
		take_from_pool(e, l, fd);
		return;
	}
	if (!t || t->helper < 0) {
		sl_count(e, SL_C_drop_splice_no_helper);
		rst_close(fd);
		return;
	}
	if (!room_for_one(e)) {
		rst_close(fd);
		return;
	}
	if (send(t->helper, &req, 1, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) {
		sl_count(e, SL_C_drop_splice_no_helper);
		rst_close(fd);
		return;
	}
	t->pend[(t->phead + t->pcount) % SL_SPLICE_PENDING] =
		(struct sl_splice_pending){
			.hfd = fd,
			.slot = (uint32_t)(l - e->listeners),
			.id = l->id,
		};
	t->pcount++;
	e->flows.n_half_open++;
	e->flows.n_splice_slots += SL_SPLICE_FDS;
}

/* @fd is a TCP stream socket of @family (the helper is not trusted). */
static bool valid_socket(int fd, int family)
{
	int type = 0, dom = 0, proto = 0;
	socklen_t len = sizeof(int);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return false;
	len = sizeof(int);
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &len) < 0)
		return false;
	len = sizeof(int);
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0)
		return false;
	return type == SOCK_STREAM && proto == IPPROTO_TCP &&
	       dom == (family == 4 ? AF_INET : AF_INET6) &&
	       fcntl(fd, F_SETFL, O_NONBLOCK) == 0;
}

static int make_pipe(int p[2], uint32_t *cap)
{
	int sz;

	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
		p[0] = p[1] = -1;
		return -1;
	}
	sz = fcntl(p[1], F_GETPIPE_SZ);
	*cap = sz > 0 ? (uint32_t)sz : 65536;
	return 0;
}

/*
 * grow_pipe() - the first time a pipe fills up, make it SL_SPLICE_PIPE_SZ:
 * fewer splice() calls per byte for bulk transfers, while the many short
 * connections keep the default size and do not eat the user's pipe budget
 * (pipe-user-pages-soft; past it the kernel refuses and the size stays).
 */
static void grow_pipe(int p[2], uint32_t *cap, bool *grown)
{
	int sz;

	*grown = true;
	if (fcntl(p[1], F_SETPIPE_SZ, SL_SPLICE_PIPE_SZ) < 0)
		return;
	sz = fcntl(p[1], F_GETPIPE_SZ);
	if (sz > 0)
		*cap = (uint32_t)sz;
}

static int epoll_add(struct sl_engine *e, int fd, uint64_t tag)
{
	struct epoll_event ev = {
		.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		.data.u64 = tag,
	};

	return epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void pump(struct sl_engine *e, struct sl_splice *c);

/* Start relaying connection @hfd through @nfd, connecting it to @daddr:@dport. */
static void conn_start(struct sl_engine *e, int hfd, int nfd, int family,
		       const uint8_t *daddr, uint16_t dport)
{
	struct sl_splice_tab *t = e->splice.tab;
	struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6 };
	struct sockaddr_in sa4 = { .sin_family = AF_INET };
	struct sl_splice *c = &t->conn[t->free_head];
	int one = 1, r;

	t->free_head = c->next_free;
	t->nused++;
	c->used = true;
	c->flags = SP_CONNECTING;	/* n_half_open was counted at accept */
	c->hfd = hfd;
	c->nfd = nfd;
	c->in_hn = c->in_nh = 0;
	c->grown_hn = c->grown_nh = false;
	c->last_ns = e->now;
	c->hn[0] = c->hn[1] = c->nh[0] = c->nh[1] = -1;
	sl_count(e, SL_C_splice_opened);
	if (make_pipe(c->hn, &c->cap_hn) < 0 || make_pipe(c->nh, &c->cap_nh) < 0) {
		sl_count(e, SL_C_drop_socket_error);
		conn_close(e, c, true);
		return;
	}
	setsockopt(hfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(nfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (family == 4) {
		memcpy(&sa4.sin_addr, daddr, 4);
		sa4.sin_port = htons(dport);
		r = connect(nfd, (struct sockaddr *)&sa4, sizeof(sa4));
	} else {
		memcpy(&sa6.sin6_addr, daddr, 16);
		sa6.sin6_port = htons(dport);
		r = connect(nfd, (struct sockaddr *)&sa6, sizeof(sa6));
	}
	if (r < 0 && errno != EINPROGRESS) {
		sl_count(e, SL_C_splice_refused);
		conn_close(e, c, true);
		return;
	}
	if (epoll_add(e, hfd, conn_tag(t, c, 0)) < 0 ||
	    epoll_add(e, nfd, conn_tag(t, c, 1)) < 0) {
		sl_count(e, SL_C_drop_socket_error);
		conn_close(e, c, true);
		return;
	}
	if (r == 0) {
		c->flags &= ~SP_CONNECTING;
		e->flows.n_half_open--;
		pump(e, c);
	}
}

/**
 * drop_pending() - give up a host connection that waited for the helper:
 * reset the host client, close the namespace socket if one came, and free
 * the connection's half-open and flow-cap slots.
 */
static void drop_pending(struct sl_engine *e, int hfd, int nfd)
{
	e->flows.n_half_open--;
	release_slot(e);
	rst_close(hfd);
	if (nfd >= 0)
		close(nfd);
}

/* Take one reply from the helper. Return: false when there is none. */
static bool helper_reply(struct sl_engine *e)
{
	struct sl_splice_tab *t = e->splice.tab;
	union {
		char buf[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} u;
	uint8_t status = 1;
	struct iovec iov = { .iov_base = &status, .iov_len = 1 };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	struct sl_splice_pending p;
	struct cmsghdr *cm;
	const struct sl_listener *l;
	int nfd = -1, nfds = 0;
	ssize_t n;

	n = recvmsg(t->helper, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return false;
	if (n <= 0) {
		helper_gone(e);
		return false;
	}
	for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		int k, cnt, fds[2];

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		cnt = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		if (cnt > 2)
			cnt = 2;
		memcpy(fds, CMSG_DATA(cm), (size_t)cnt * sizeof(int));
		for (k = 0; k < cnt; k++) {
			if (nfds++ == 0)
				nfd = fds[k];
			else
				close(fds[k]);
		}
	}
	if (!t->pcount) {	/* unsolicited */
		sl_count(e, SL_C_drop_splice_helper_reply);
		if (nfd >= 0)
			close(nfd);
		return true;
	}
	p = t->pend[t->phead];
	t->phead = (t->phead + 1) % SL_SPLICE_PENDING;
	t->pcount--;
	l = &e->listeners[p.slot];
	if (!l->used || l->id != p.id ||
	    (l->mode != SL_LM_SPLICE && l->mode != SL_LM_SPLIT)) {
		/* the forward was removed meanwhile */
		drop_pending(e, p.hfd, nfd);
		return true;
	}
	if (status != 0 || nfds != 1 || (msg.msg_flags & MSG_CTRUNC) ||
	    !valid_socket(nfd, l->family)) {
		sl_count(e, SL_C_drop_splice_helper_reply);
		drop_pending(e, p.hfd, nfd);
		return true;
	}
	conn_start(e, p.hfd, nfd, l->family,
		   l->has_splice_addr ? l->splice_addr : l->gaddr, l->gport);
	return true;
}

void sl_splice_helper_event(struct sl_engine *e, uint32_t ev)
{
	int i;

	(void)ev;	/* EOF and errors show up as recvmsg() results */
	for (i = 0; i < SL_SPLICE_ACCEPTS && e->splice.tab->helper >= 0; i++)
		if (!helper_reply(e))
			break;
}

/**
 * move() - one step of @src -> pipe @p -> @dst.
 * Return: 1 on progress, 0 if both ends would block, -errno on an error.
 */
static int move(int src, int dst, int p[2], uint32_t *inpipe, uint32_t *cap,
		bool *grown, bool *eof, uint64_t *bytes)
{
	int progress = 0;
	ssize_t n;

	if (!*eof && *inpipe < *cap) {
		n = splice(src, NULL, p[1], NULL, *cap - *inpipe,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			*inpipe += (uint32_t)n;
			if (*inpipe >= *cap && !*grown)
				grow_pipe(p, cap, grown);
			progress = 1;
		} else if (n == 0) {
			*eof = true;
			progress = 1;
		} else if (errno != EAGAIN && errno != EINTR) {
			return -errno;
		}
	}
	if (*inpipe) {
		/* A peer's reset comes back here (or from the read above) as
		 * ECONNRESET, and both peers get a reset. splice() has no
		 * MSG_NOSIGNAL: EPIPE (with SIGPIPE, which CPython ignores)
		 * would need a write after our own shutdown, which the FIN
		 * logic below never does. */
		n = splice(p[0], NULL, dst, NULL, *inpipe,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			*inpipe -= (uint32_t)n;
			*bytes += (uint64_t)n;
			progress = 1;
		} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
			return -errno;
		}
	}
	return progress;
}

/* Move data both ways until nothing moves; pass FINs; close when done. */
static void pump(struct sl_engine *e, struct sl_splice *c)
{
	struct sl_splice_tab *t = e->splice.tab;
	int round;

	for (round = 0; round < SL_SPLICE_ROUNDS; round++) {
		bool heof = c->flags & SP_HOST_EOF, neof = c->flags & SP_NS_EOF;
		int a, b;

		a = move(c->hfd, c->nfd, c->hn, &c->in_hn, &c->cap_hn,
			 &c->grown_hn, &heof,
			 &e->ctr[SL_C_splice_bytes_to_guest]);
		b = move(c->nfd, c->hfd, c->nh, &c->in_nh, &c->cap_nh,
			 &c->grown_nh, &neof,
			 &e->ctr[SL_C_splice_bytes_to_host]);
		if (heof)
			c->flags |= SP_HOST_EOF;
		if (neof)
			c->flags |= SP_NS_EOF;
		if (a < 0 || b < 0) {
			sl_count(e, SL_C_splice_resets);
			conn_close(e, c, true);
			return;
		}
		if (!a && !b)
			break;
		c->last_ns = e->now;
	}
	if (round == SL_SPLICE_ROUNDS) {
		/* Budget spent with data still moving: re-arm so that the
		 * edge-triggered sockets report again on the next poll. */
		struct epoll_event ev = {
			.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
			.data.u64 = conn_tag(t, c, 0),
		};

		epoll_ctl(e->epfd, EPOLL_CTL_MOD, c->hfd, &ev);
	}
	if ((c->flags & (SP_HOST_EOF | SP_NS_SHUT)) == SP_HOST_EOF && !c->in_hn) {
		shutdown(c->nfd, SHUT_WR);
		c->flags |= SP_NS_SHUT;
	}
	if ((c->flags & (SP_NS_EOF | SP_HOST_SHUT)) == SP_NS_EOF && !c->in_nh) {
		shutdown(c->hfd, SHUT_WR);
		c->flags |= SP_HOST_SHUT;
	}
	if ((c->flags & (SP_NS_SHUT | SP_HOST_SHUT)) ==
	    (SP_NS_SHUT | SP_HOST_SHUT))
		conn_close(e, c, false);
}

/**
 * sl_splice_event() - readiness on one socket of a spliced connection.
 * @tag: the epoll tag (slot, generation, side)
 */
void sl_splice_event(struct sl_engine *e, uint64_t tag, uint32_t ev)
{
	struct sl_splice_tab *t = e->splice.tab;
	uint32_t idx = (uint32_t)tag;
	struct sl_splice *c;

	if (!t || idx >= t->nmax)
		return;
	c = &t->conn[idx];
	if (!c->used || (c->gen & 0x7fffff) != ((tag >> 33) & 0x7fffff))
		return;	/* stale: the slot was freed in this batch */
	if (c->flags & SP_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (!(tag & (1ULL << 32)) ||
		    !(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;	/* host side: wait for the guest to answer */
		if (getsockopt(c->nfd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (!err && !(ev & EPOLLOUT))
			err = ECONNREFUSED;
		if (err) {
			sl_count(e, SL_C_splice_refused);
			conn_close(e, c, true);
			return;
		}
		c->flags &= ~SP_CONNECTING;
		e->flows.n_half_open--;
	}
	pump(e, c);
}

/**
 * sl_splice_timer() - reset established spliced connections idle for
 * tcp_idle_s, as tcp.c does for its flows: a peer that vanished without a
 * FIN must not hold six fds for ever. (A connect() the guest never answers
 * fails by itself after the kernel's SYN retries.)
 */
void sl_splice_timer(struct sl_engine *e)
{
	struct sl_splice_tab *t = e->splice.tab;
	uint64_t max_idle = (uint64_t)e->cfg.tcp_idle_s * NSEC_PER_SEC;
	uint32_t i;

	for (i = 0; t && i < t->nmax; i++) {
		struct sl_splice *c = &t->conn[i];

		if (c->used && !(c->flags & SP_CONNECTING) &&
		    e->now - c->last_ns >= max_idle) {
			sl_count(e, SL_C_splice_idle_closed);
			conn_close(e, c, true);
		}
	}
}

/* Close everything spliced (engine teardown). */
void sl_splice_fini(struct sl_engine *e)
{
	struct sl_splice_tab *t = e->splice.tab;
	uint32_t i;

	if (!t)
		return;
	for (i = 0; i < t->nmax; i++)
		if (t->conn[i].used)
			conn_close(e, &t->conn[i], true);
	while (t->pcount) {
		close(t->pend[t->phead].hfd);
		t->phead = (t->phead + 1) % SL_SPLICE_PENDING;
		t->pcount--;
	}
	if (t->helper >= 0)
		close(t->helper);
	for (i = 0; i < 2; i++)
		while (t->npool[i])
			close(t->pool[i][--t->npool[i]]);
	if (t->netfd >= 0)
		close(t->netfd);
	if (t->userfd >= 0)
		close(t->userfd);
	free(t->conn);
	free(t);
	e->splice.tab = NULL;
}

/**
 * loopback_socket() - a socket of this netns bound to its loopback
 * (127.0.0.1 or ::1, v6-only) at @port: listening TCP (@tcp) or UDP.
 * Return: the fd, or -errno.
 */
static int loopback_socket(bool tcp, int family, uint16_t port)
{
	struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6 };
	struct sockaddr_in sa4 = { .sin_family = AF_INET };
	int fd, one = 1, r;

	if (family != 4 && family != 6)
		return -EAFNOSUPPORT;
	fd = socket(family == 4 ? AF_INET : AF_INET6,
		    (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* TCP: no TIME_WAIT leftovers in the way. Not UDP, where it would
	 * let a second socket share the port. */
	if (tcp)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == 4) {
		sa4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sa4.sin_port = htons(port);
		r = bind(fd, (struct sockaddr *)&sa4, sizeof(sa4));
	} else {
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		sa6.sin6_addr = in6addr_loopback;
		sa6.sin6_port = htons(port);
		r = bind(fd, (struct sockaddr *)&sa6, sizeof(sa6));
	}
	if (r == 0 && tcp)
		r = listen(fd, SOMAXCONN);
	if (r < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

struct sl_ns_lo_job {
	bool tcp;
	int family;
	uint16_t port;
	int fd;			/* the socket, or -errno */
};

static int make_loopback(void *p)
{
	struct sl_ns_lo_job *j = p;

	j->fd = loopback_socket(j->tcp, j->family, j->port);
	return 0;
}

/**
 * sl_ns_loopback_socket() - what the helper's 'L'/'U' request makes (see
 * sl_ns_helper_serve), made without a helper through nssock.c: a socket
 * of the network namespace @netfd (joining the user namespace @userfd
 * first, -1: none) bound to its loopback at @port, listening TCP (@tcp)
 * or UDP, family @family (4/6). Not possible once slirpy is confined.
 *
 * Return: the fd, or -errno.
 */
int sl_ns_loopback_socket(int netfd, int userfd, int tcp, int family,
			  uint16_t port)
{
	struct sl_ns_lo_job j = {
		.tcp = tcp != 0, .family = family, .port = port, .fd = -EIO,
	};
	int r = sl_ns_run(netfd, userfd, make_loopback, &j);

	return r < 0 ? r : j.fd;
}

/**
 * sl_ns_make_sockets() - up to @n (at most 32) non-blocking TCP sockets of
 * @family (4/6) in the network namespace @netfd (joining the user namespace
 * @userfd first, -1: none), in @fds: one nssock.c round, as the pool of
 * spliced forwards makes them (tests and measurements).
 *
 * Return: how many were made, or -errno.
 */
int sl_ns_make_sockets(int netfd, int userfd, int family, int *fds, int n)
{
	return sl_ns_make_tcp(netfd, userfd, family, fds, n);
}

/**
 * sl_ns_helper_serve() - the namespace helper's loop (runs in the forked
 * child, already inside the container's user + network namespaces).
 * @sock: SOCK_SEQPACKET to the engine; @pidfd: the container's process
 * (-1: none). Answers each request byte (4 or 6) with a new non-blocking
 * TCP socket of that family, created here so it belongs to this netns.
 * A 4-byte request { 'L' or 'U', family, port (big-endian) } is answered
 * with a listening TCP ('L') or bound UDP ('U') socket on this netns's
 * loopback at that port (pasta's -T/-U: slirpy.engine.ns_loopback_socket
 * asks on a helper of its own, not the engine's); the reply's status byte
 * is then 0 or the errno (capped at 255).
 *
 * Dies with slirpy (PR_SET_PDEATHSIG, and EOF on @sock), and when the
 * container's process exits, so that it does not keep the container's
 * network namespace alive on its own.
 *
 * Return: 0 when told to stop by EOF or the pidfd, -errno on an error.
 */
int sl_ns_helper_serve(int sock, int pidfd)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Not dumpable: the container's root cannot ptrace or read it. */
	prctl(PR_SET_DUMPABLE, 0);
	for (;;) {
		struct pollfd pf[2] = {
			{ .fd = sock, .events = POLLIN },
			{ .fd = pidfd, .events = POLLIN },
		};
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} u;
		uint8_t req[16], status;
		struct iovec iov = { .iov_base = &status, .iov_len = 1 };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;
		int fd = -1, fam;

		if (poll(pf, pidfd >= 0 ? 2 : 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (pidfd >= 0 && pf[1].revents)
			return 0;
		n = recv(sock, req, sizeof(req), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : 0;
		if (n == 4 && (req[0] == 'L' || req[0] == 'U')) {
			fd = loopback_socket(req[0] == 'L', req[1],
					     (uint16_t)(req[2] << 8 | req[3]));
			status = fd < 0 ? (uint8_t)(-fd > 255 ? 255 : -fd) : 0;
		} else {
			fam = req[0] == 4 ? AF_INET :
			      req[0] == 6 ? AF_INET6 : -1;
			if (fam > 0)
				fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK |
						 SOCK_CLOEXEC, IPPROTO_TCP);
			status = fd < 0;
		}
		if (fd >= 0) {
			struct cmsghdr *cm;

			msg.msg_control = u.buf;
			msg.msg_controllen = sizeof(u.buf);
			cm = CMSG_FIRSTHDR(&msg);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cm), &fd, sizeof(int));
		}
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
		if (fd >= 0)
			close(fd);
		if (n < 0)
			return errno == EPIPE || errno == ECONNRESET ? 0 : -errno;
	}
}
