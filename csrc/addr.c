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

static int remote_v4(struct sl_engine *e, const uint8_t *r, uint16_t rport,
		     int proto, void *sa, uint32_t *salen)
{
	static const uint8_t bcast[4] = { 255, 255, 255, 255 };

	if (!memcmp(r, e->cfg.gw4, 4) || !memcmp(r, bcast, 4)) {
		if (!e->cfg.host_loopback)
			return -ENETUNREACH;
		return loopback_v4(sa, rport, salen);
	}
	if (!memcmp(r, e->cfg.dns4, 4))
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
	bool in_prefix = !memcmp(r, e->cfg.prefix6, 8) &&
			 !memcmp(r + 8, zero16, 7);

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
	memset(sin6, 0, sizeof(*sin6));
	sin6->sin6_family = AF_INET6;
	memcpy(&sin6->sin6_addr, r, 16);
	sin6->sin6_port = htons(rport);
	*salen = sizeof(*sin6);
	return 0;
}

/**
 * sl_remote_sockaddr() - where a guest's packet to @raddr:@rport goes.
 * @sa: at least a struct sockaddr_in6; filled on success
 *
 * Return: 0; -ENETUNREACH (host loopback disabled), -ECONNREFUSED (N+3 on
 * a port other than 53, or DNS disabled), -EINVAL (never forwarded).
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
 *          becomes that family's gateway, others keep their own family
 *          (v4-mapped peers are unmapped).
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
