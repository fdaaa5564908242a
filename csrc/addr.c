// SPDX-License-Identifier: MIT
/*
 * addr.c - the address map between the guest's view and host sockets.
 *
 * Outbound: the gateway N+2 / prefix::2 (and 255.255.255.255) means the
 * host's loopback unless host loopback is disabled; N+3:53 / prefix::3:53
 * means Python's DNS forwarder on 127.0.0.1; every other routable address
 * is itself. Addresses that would let a guest reach the host's loopback by
 * another name (127/8, ::1, v4-mapped) are refused here, in one place.
 * Inbound: a loopback client appears as the gateway.
 *
 * Shared-address mode (cfg.shared_addr, pasta's model): the guest owns the
 * host's addresses, so there is no N+2/N+3 here; the address-map table
 * (cfg.maps) says which guest destinations go elsewhere, then the same
 * "never a host socket" checks apply, then an address is itself. Inbound, a
 * loopback client or one using the guest's (= the host's) own address
 * appears as cfg.peer_sub4/6; any other client keeps its address. The map
 * table applies in slirp4netns mode too, before N+2/N+3 (it is empty there
 * unless Python fills it, so that mode is unchanged).
 */
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"

static const uint8_t zero16[16];

static int set_v4(struct sockaddr_in *sin, const uint8_t *a, uint16_t port,
		  uint32_t *salen)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	memcpy(&sin->sin_addr, a, 4);
	sin->sin_port = htons(port);
	*salen = sizeof(*sin);
	return 0;
}

static int loopback_v4(struct sockaddr_in *sin, uint16_t port,
		       uint32_t *salen)
{
	static const uint8_t lo[4] = { 127, 0, 0, 1 };

	return set_v4(sin, lo, port, salen);
}

static int dns_redirect(struct sl_engine *e, int proto, uint16_t rport,
			void *sa, uint32_t *salen)
{
	uint16_t port = proto == IPPROTO_TCP_ ? e->cfg.dns_tcp_port :
						e->cfg.dns_udp_port;

	if (!e->cfg.dns_enabled || rport != 53 || !port ||
	    (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_))
		return -ECONNREFUSED;
	return loopback_v4(sa, port, salen);
}

static void set_v6(struct sockaddr_in6 *sin6, const uint8_t *a,
		   uint16_t port, uint32_t *salen)
{
	memset(sin6, 0, sizeof(*sin6));
	sin6->sin6_family = AF_INET6;
	memcpy(&sin6->sin6_addr, a, 16);
	sin6->sin6_port = htons(port);
	*salen = sizeof(*sin6);
}

/**
 * apply_map() - the address-map entry for @family/@r, if any.
 * Return: 1 and @sa filled when mapped, 0 when no entry matches,
 * -ECONNREFUSED for a DNS-only entry on another port or protocol.
 */
static int apply_map(struct sl_engine *e, int family, const uint8_t *r,
		     uint16_t rport, int proto, void *sa, uint32_t *salen)
{
	size_t alen = family == 4 ? 4 : 16;
	unsigned i;

	for (i = 0; i < SL_MAX_ADDR_MAPS; i++) {
		const struct sl_addr_map *m = &e->cfg.maps[i];
		uint16_t port;

		if (m->family != family || memcmp(m->match, r, alen))
			continue;
		if (m->dns_only &&
		    ((proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_) ||
		     (rport != 53 && rport != 853)))
			return -ECONNREFUSED;
		port = m->target_port ? m->target_port : rport;
		if (family == 4)
			set_v4(sa, m->target, port, salen);
		else
			set_v6(sa, m->target, port, salen);
		return 1;
	}
	return 0;
}

static int remote_v4(struct sl_engine *e, const uint8_t *r, uint16_t rport,
		     int proto, void *sa, uint32_t *salen)
{
	static const uint8_t bcast[4] = { 255, 255, 255, 255 };
	int m = apply_map(e, 4, r, rport, proto, sa, salen);

	if (m)
		return m < 0 ? m : 0;
	if (!e->cfg.shared_addr &&
	    (!memcmp(r, e->cfg.gw4, 4) || !memcmp(r, bcast, 4))) {
		if (!e->cfg.host_loopback)
			return -ENETUNREACH;
		return loopback_v4(sa, rport, salen);
	}
	if (!e->cfg.shared_addr && !memcmp(r, e->cfg.dns4, 4))
		return dns_redirect(e, proto, rport, sa, salen);
	if (r[0] == 0 || r[0] == 127 || r[0] >= 224)
		return -EINVAL;
	return set_v4(sa, r, rport, salen);
}

static int remote_v6(struct sl_engine *e, const uint8_t *r, uint16_t rport,
		     int proto, void *sa, uint32_t *salen)
{
	static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };
	struct sockaddr_in6 *sin6 = sa;
	bool in_prefix = !e->cfg.shared_addr && !memcmp(r, e->cfg.prefix6, 8) &&
			 !memcmp(r + 8, zero16, 7);
	int m = apply_map(e, 6, r, rport, proto, sa, salen);

	if (m)
		return m < 0 ? m : 0;
	if (in_prefix && r[15] == 2) {
		if (!e->cfg.host_loopback)
			return -ENETUNREACH;
		memset(sin6, 0, sizeof(*sin6));
		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr.s6_addr[15] = 1;
		sin6->sin6_port = htons(rport);
		*salen = sizeof(*sin6);
		return 0;
	}
	if (in_prefix && r[15] == 3)
		return dns_redirect(e, proto, rport, sa, salen);
	/* ::, ::1, v4-mapped, multicast, link-local: never a host socket. */
	if (!memcmp(r, zero16, 15) || !memcmp(r, mapped, 12) || r[0] == 0xff ||
	    (r[0] == 0xfe && (r[1] & 0xc0) == 0x80))
		return -EINVAL;
	set_v6(sin6, r, rport, salen);
	return 0;
}

/**
 * sl_remote_sockaddr() - where a guest's packet to @raddr:@rport goes.
 * @sa: at least a struct sockaddr_in6; filled on success
 *
 * Return: 0; -ENETUNREACH (host loopback disabled), -ECONNREFUSED (N+3 on
 * a port other than 53, or DNS disabled; a DNS-only map entry on another
 * port), -EINVAL (never forwarded).
 */
int sl_remote_sockaddr(struct sl_engine *e, int family, const uint8_t *raddr,
		       uint16_t rport, int proto, void *sa, uint32_t *salen)
{
	if (family == 4)
		return remote_v4(e, raddr, rport, proto, sa, salen);
	return remote_v6(e, raddr, rport, proto, sa, salen);
}

/**
 * sl_guest_view_of() - how a host peer appears to the guest.
 * @family: in: the family the guest side uses (4 or 6); a loopback peer
 *          becomes that family's gateway (shared mode: cfg.peer_sub4/6, as
 *          does a peer using the guest's own address), others keep their
 *          own family (v4-mapped peers are unmapped).
 * Return: 0, or -EAFNOSUPPORT when the peer cannot be shown in @family.
 */
int sl_guest_view_of(struct sl_engine *e, const void *sa, int *family,
		     uint8_t *addr, uint16_t *port)
{
	const struct sockaddr *s = sa;
	uint8_t a[16];
	int fam;

	if (s->sa_family == AF_INET) {
		const struct sockaddr_in *sin = sa;

		memcpy(a, &sin->sin_addr, 4);
		*port = ntohs(sin->sin_port);
		fam = 4;
	} else {
		const struct sockaddr_in6 *sin6 = sa;
		static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };

		*port = ntohs(sin6->sin6_port);
		if (!memcmp(&sin6->sin6_addr, mapped, 12)) {
			memcpy(a, sin6->sin6_addr.s6_addr + 12, 4);
			fam = 4;
		} else {
			memcpy(a, &sin6->sin6_addr, 16);
			fam = 6;
		}
	}
	if (e->cfg.shared_addr &&
	    ((fam == 4 && (a[0] == 127 || !memcmp(a, e->cfg.guest4, 4))) ||
	     (fam == 6 && ((!memcmp(a, zero16, 15) && a[15] == 1) ||
			   !memcmp(a, e->cfg.guest6, 16))))) {
		memcpy(addr, *family == 4 ? e->cfg.peer_sub4 : e->cfg.peer_sub6,
		       *family == 4 ? 4 : 16);
		return 0;
	}
	if ((fam == 4 && a[0] == 127) ||
	    (fam == 6 && !memcmp(a, zero16, 15) && a[15] == 1)) {
		if (*family == 4) {
			memcpy(addr, e->cfg.gw4, 4);
		} else {
			memcpy(addr, e->cfg.prefix6, 16);
			memset(addr + 8, 0, 8);
			addr[15] = 2;
		}
		return 0;
	}
	if (fam != *family)
		return -EAFNOSUPPORT;
	memcpy(addr, a, fam == 4 ? 4 : 16);
	return 0;
}

/**
 * sl_bind_outbound() - bind a new outbound socket to --outbound-addr[6].
 * Loopback destinations are never bound (a global source cannot reach lo).
 */
int sl_bind_outbound(struct sl_engine *e, int fd, int family)
{
	if (family == AF_INET && memcmp(e->cfg.outbound4, zero16, 4)) {
		struct sockaddr_in sin = { .sin_family = AF_INET };

		memcpy(&sin.sin_addr, e->cfg.outbound4, 4);
		return bind(fd, (struct sockaddr *)&sin, sizeof(sin));
	}
	if (family == AF_INET6 && memcmp(e->cfg.outbound6, zero16, 16)) {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };

		memcpy(&sin6.sin6_addr, e->cfg.outbound6, 16);
		return bind(fd, (struct sockaddr *)&sin6, sizeof(sin6));
	}
	return 0;
}

/**
 * sl_engine_set_addr_map() - set entry @idx of the address-map table
 * (family 0 clears it). New flows follow it; existing flows keep their
 * sockets.
 *
 * Return: 0, or -EINVAL for a bad index or family.
 */
int sl_engine_set_addr_map(struct sl_engine *e, unsigned idx,
			   const struct sl_addr_map *m)
{
	if (idx >= SL_MAX_ADDR_MAPS ||
	    (m->family != 0 && m->family != 4 && m->family != 6))
		return -EINVAL;
	e->cfg.maps[idx] = *m;
	if (!m->family)
		memset(&e->cfg.maps[idx], 0, sizeof(*m));
	return 0;
}

/**
 * sl_sockaddr_is_loopback() - @sa is the host's loopback (127/8, ::1,
 * v4-mapped 127/8): a map entry's target from sl_remote_sockaddr (never
 * bound to --outbound-addr: a global source cannot reach lo), or an
 * accepted peer (splice.c: loopback clients of a split listener).
 */
bool sl_sockaddr_is_loopback(const void *sa)
{
	static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };
	static const uint8_t lo6[16] = { [15] = 1 };
	const struct sockaddr *s = sa;

	if (s->sa_family == AF_INET)
		return ((const uint8_t *)&((const struct sockaddr_in *)sa)
				->sin_addr)[0] == 127;
	if (s->sa_family == AF_INET6) {
		const uint8_t *a =
			((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;

		return !memcmp(a, lo6, 16) ||
		       (!memcmp(a, mapped, 12) && a[12] == 127);
	}
	return false;
}
