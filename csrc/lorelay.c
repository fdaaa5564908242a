// SPDX-License-Identifier: MIT
/*
 * lorelay.c - pasta's -U: UDP datagrams to the guest's loopback relayed to
 * the host's loopback at the same (or the forward's) port, and back.
 *
 * The listener is a UDP socket of the guest's netns bound to 127.0.0.1 or
 * ::1 (slirpy.engine.ns_loopback_socket) and marked SL_LM_TO_HOST_LO.
 * Each new peer (address and port, as recvfrom() gives it) gets a relay: a
 * host socket, made here in the host's netns and connected to the host's
 * loopback at the forward's guest port. Datagrams from the peer go out on
 * that socket; what comes back is sent to the peer from the listener, so
 * the peer sees its own destination answer. The contract is in lorelay.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"

#define SL_LORELAY_BATCH 64	/* datagrams per event */

/**
 * struct sl_lorelay - one peer of one SL_LM_TO_HOST_LO UDP listener.
 * @slot, @id: the listener (slot in e->listeners, still holding forward @id)
 * @gen: bumped when the slot is freed, so stale epoll tags are ignored
 */
struct sl_lorelay {
	int fd;
	uint32_t slot, id;
	struct sockaddr_in6 peer;
	socklen_t peerlen;
	uint64_t last_ns;
	uint32_t gen;
	bool used;
};

static uint64_t relay_tag(const struct sl_engine *e, const struct sl_lorelay *r)
{
	return ((uint64_t)SL_TAG_LORELAY << 56) | ((uint64_t)r->gen << 24) |
	       (uint32_t)(r - e->lorelay.tab);
}

static void relay_close(struct sl_engine *e, struct sl_lorelay *r)
{
	close(r->fd);	/* also leaves the epoll set */
	r->used = false;
	r->gen = (r->gen + 1) & 0xffffff;
	sl_count(e, SL_C_lorelay_closed);
}

/* The listener of @r, or NULL when it was removed (or replaced). */
static struct sl_listener *relay_listener(struct sl_engine *e,
					  const struct sl_lorelay *r)
{
	struct sl_listener *l = &e->listeners[r->slot];

	return l->used && l->id == r->id && l->proto == SL_UDP &&
		       l->mode == SL_LM_TO_HOST_LO ? l : NULL;
}

/* A free slot, or the least recently used one emptied. */
static struct sl_lorelay *relay_slot(struct sl_engine *e)
{
	struct sl_lorelay *t = e->lorelay.tab, *lru = NULL;
	uint32_t i;

	for (i = 0; i < SL_LORELAY_MAX; i++) {
		if (!t[i].used)
			return &t[i];
		if (!lru || t[i].last_ns < lru->last_ns)
			lru = &t[i];
	}
	sl_count(e, SL_C_flows_evicted);
	relay_close(e, lru);
	return lru;
}

static struct sl_lorelay *relay_open(struct sl_engine *e,
				     struct sl_listener *l,
				     const struct sockaddr_in6 *peer,
				     socklen_t peerlen)
{
	struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6 };
	struct sockaddr_in sa4 = { .sin_family = AF_INET };
	struct epoll_event ev = { .events = EPOLLIN };
	struct sl_lorelay *r;
	int fd, rc;

	if (!e->lorelay.tab) {
		e->lorelay.tab = calloc(SL_LORELAY_MAX, sizeof(*e->lorelay.tab));
		if (!e->lorelay.tab)
			return NULL;
	}
	fd = socket(l->family == 4 ? AF_INET : AF_INET6,
		    SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	/* The host's loopback, never bound to --outbound-addr. */
	if (l->family == 4) {
		sa4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sa4.sin_port = htons(l->gport);
		rc = connect(fd, (struct sockaddr *)&sa4, sizeof(sa4));
	} else {
		sa6.sin6_addr = in6addr_loopback;
		sa6.sin6_port = htons(l->gport);
		rc = connect(fd, (struct sockaddr *)&sa6, sizeof(sa6));
	}
	if (rc < 0) {
		close(fd);
		return NULL;
	}
	r = relay_slot(e);
	*r = (struct sl_lorelay){
		.fd = fd, .slot = (uint32_t)(l - e->listeners), .id = l->id,
		.peer = *peer, .peerlen = peerlen, .last_ns = e->now,
		.gen = r->gen, .used = true,
	};
	ev.data.u64 = relay_tag(e, r);
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		relay_close(e, r);
		return NULL;
	}
	sl_count(e, SL_C_lorelay_opened);
	return r;
}

static struct sl_lorelay *relay_find(struct sl_engine *e,
				     const struct sl_listener *l,
				     const struct sockaddr_in6 *peer,
				     socklen_t peerlen)
{
	struct sl_lorelay *t = e->lorelay.tab;
	uint32_t i, slot = (uint32_t)(l - e->listeners);

	for (i = 0; t && i < SL_LORELAY_MAX; i++)
		if (t[i].used && t[i].slot == slot && t[i].id == l->id &&
		    t[i].peerlen == peerlen && !memcmp(&t[i].peer, peer, peerlen))
			return &t[i];
	return NULL;
}

/**
 * sl_lorelay_listener_event() - datagrams on a SL_LM_TO_HOST_LO UDP
 * listener: each goes to its peer's relay (opened on the first one).
 */
void sl_lorelay_listener_event(struct sl_engine *e, struct sl_listener *l)
{
	int i;

	for (i = 0; i < SL_LORELAY_BATCH; i++) {
		struct sockaddr_in6 peer;
		socklen_t plen = sizeof(peer);
		struct sl_lorelay *r;
		ssize_t n;

		memset(&peer, 0, sizeof(peer));
		n = recvfrom(l->fd, e->rxbuf, SL_FRAME_MAX, MSG_DONTWAIT,
			     (struct sockaddr *)&peer, &plen);
		if (n < 0)
			break;
		r = relay_find(e, l, &peer, plen);
		if (!r)
			r = relay_open(e, l, &peer, plen);
		if (!r) {
			sl_count(e, SL_C_drop_socket_error);
			continue;
		}
		r->last_ns = e->now;
		if (send(r->fd, e->rxbuf, (size_t)n, MSG_DONTWAIT) < 0)
			sl_count(e, SL_C_drop_socket_error);
		else
			sl_count(e, SL_C_lorelay_datagrams_to_host);
	}
}

/* sl_lorelay_event() - replies on a relay's host socket, to its peer. */
void sl_lorelay_event(struct sl_engine *e, uint64_t tag)
{
	struct sl_lorelay *r;
	struct sl_listener *l;
	uint32_t idx = (uint32_t)tag & 0xffffff;
	int i;

	if (!e->lorelay.tab || idx >= SL_LORELAY_MAX)
		return;
	r = &e->lorelay.tab[idx];
	if (!r->used || r->gen != ((tag >> 24) & 0xffffff))
		return;	/* stale: the slot was freed in this batch */
	l = relay_listener(e, r);
	if (!l) {
		relay_close(e, r);
		return;
	}
	for (i = 0; i < SL_LORELAY_BATCH; i++) {
		ssize_t n = recv(r->fd, e->rxbuf, SL_FRAME_MAX, MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == EINTR)
				break;
			continue;	/* e.g. ECONNREFUSED: nobody there yet */
		}
		r->last_ns = e->now;
		if (sendto(l->fd, e->rxbuf, (size_t)n, MSG_DONTWAIT,
			   (struct sockaddr *)&r->peer, r->peerlen) < 0)
			sl_count(e, SL_C_drop_socket_error);
		else
			sl_count(e, SL_C_lorelay_datagrams_to_ns);
	}
}

/**
 * sl_lorelay_timer() - close relays idle for cfg.udp_idle_s, and those
 * whose listener was removed.
 */
void sl_lorelay_timer(struct sl_engine *e)
{
	uint64_t max_idle = (uint64_t)e->cfg.udp_idle_s * NSEC_PER_SEC;
	struct sl_lorelay *t = e->lorelay.tab;
	uint32_t i;

	for (i = 0; t && i < SL_LORELAY_MAX; i++)
		if (t[i].used && (e->now - t[i].last_ns >= max_idle ||
				  !relay_listener(e, &t[i])))
			relay_close(e, &t[i]);
}

void sl_lorelay_fini(struct sl_engine *e)
{
	struct sl_lorelay *t = e->lorelay.tab;
	uint32_t i;

	for (i = 0; t && i < SL_LORELAY_MAX; i++)
		if (t[i].used)
			close(t[i].fd);
	free(t);
	e->lorelay.tab = NULL;
}
