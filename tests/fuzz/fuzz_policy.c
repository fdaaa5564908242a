// SPDX-License-Identifier: MIT
/*
 * fuzz_policy.c - libFuzzer harness for the egress policy's rule matcher
 * (csrc/policy.c): the compiled table against a straightforward reference.
 *
 * Links every csrc .c file (as fuzz_engine.c does) but drives only
 * sl_policy_compile() and sl_policy_match(): no engine, no socket, no
 * network namespace needed. For each input it builds a rule list, checks
 * that the compiler accepts it exactly when the reference validation does,
 * and then that every query gets the same action and rule id from the
 * compiled table as from a linear first-match scan written here, byte by
 * byte, independently of policy.c's words, masks and buckets.
 *
 * Input format:
 *   byte 0: bit 0: default action deny; bits 1-7: nids - 1 (1..128)
 *   byte 1: number of rules (clipped to what is left)
 *   rules, 11 bytes each:
 *     flags: bit 0 IPv6, bit 1 SL_PM_HOST, bit 2 deny, bit 7 raw (the
 *            fields below are taken as they are, so malformed rules occur;
 *            otherwise they are folded into their valid ranges)
 *     prefix length, proto mask, rule id,
 *     port_lo, port_hi (big-endian),
 *     address seed (3 bytes): IPv4 a.b.0.c; IPv6 a:b00::c at bytes 0, 1, 8
 *            and 15, so rules share their first 16 bits often (one bucket)
 *   queries until the input ends, 6 bytes each:
 *     flags: bit 0 IPv6, bit 1 reaches the host, bits 2-3 proto (TCP,
 *            UDP, ICMP, TCP), port (big-endian), address seed (as above,
 *            with the third seed byte taken twice: at bytes 8 and 15)
 *
 *   tests/fuzz/run.sh SECONDS with FUZZ_TARGET=policy builds and runs it.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define FZ_MAX_RULES 512

static void seed_addr(int family, const uint8_t *s, uint8_t c2,
		      uint8_t addr[16])
{
	memset(addr, 0, 16);
	if (family == 4) {
		addr[0] = s[0];
		addr[1] = s[1];
		addr[3] = c2;
	} else {
		addr[0] = s[0];
		addr[1] = s[1];
		addr[8] = c2;
		addr[15] = c2 ^ s[1];
	}
}

/* The reference: what a valid rule is (slirpy.h's contract). */
static int ref_valid(const struct sl_policy_rule *r, uint32_t nids)
{
	if (r->action != SL_POLICY_ALLOW && r->action != SL_POLICY_DENY)
		return 0;
	if (r->proto_mask > 7 || r->port_lo > r->port_hi || r->rule_id >= nids)
		return 0;
	if (r->match == SL_PM_HOST)
		return 1;
	if (r->match != SL_PM_CIDR)
		return 0;
	return (r->family == 4 && r->prefix_len <= 32) ||
	       (r->family == 6 && r->prefix_len <= 128);
}

static int ref_prefix_match(const uint8_t *a, const uint8_t *net,
			    unsigned len)
{
	unsigned bit;

	for (bit = 0; bit < len; bit++) {
		unsigned byte = bit / 8, sh = 7 - bit % 8;

		if (((a[byte] >> sh) & 1) != ((net[byte] >> sh) & 1))
			return 0;
	}
	return 1;
}

/* The reference: a linear first-match scan. */
static int ref_match(const struct sl_policy_rule *rules, uint32_t n,
		     uint8_t def, const struct sl_policy_query *q,
		     uint32_t *rule_id)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		const struct sl_policy_rule *r = &rules[i];

		if (r->match == SL_PM_HOST) {
			if (!q->host)
				continue;
		} else if (r->family != q->family ||
			   !ref_prefix_match(q->addr, r->addr, r->prefix_len)) {
			continue;
		}
		if (r->proto_mask && !(r->proto_mask & q->proto))
			continue;
		if (!q->has_port) {
			if (r->port_lo != 0 || r->port_hi != 65535)
				continue;
		} else if (q->port < r->port_lo || q->port > r->port_hi) {
			continue;
		}
		*rule_id = r->rule_id;
		return r->action;
	}
	*rule_id = UINT32_MAX;
	return def;
}

static void read_rule(const uint8_t *b, struct sl_policy_rule *r)
{
	uint8_t fl = b[0];
	int raw = fl & 0x80;

	memset(r, 0, sizeof(*r));
	r->family = (fl & 1) ? 6 : 4;
	r->match = (fl & 2) ? SL_PM_HOST : SL_PM_CIDR;
	r->action = (fl & 4) ? SL_POLICY_DENY : SL_POLICY_ALLOW;
	r->prefix_len = b[1];
	r->proto_mask = b[2];
	r->rule_id = b[3];
	r->port_lo = (uint16_t)((b[4] << 8) | b[5]);
	r->port_hi = (uint16_t)((b[6] << 8) | b[7]);
	seed_addr(r->family, b + 8, b[10], r->addr);
	if (raw) {
		/* Malformed fields too: actions 0 and 3, matches 2 and 3,
		 * family 5, and the raw prefix, protos and ports. */
		r->action = (uint8_t)((fl >> 2) & 3);
		r->match = (uint8_t)(((fl >> 1) & 1) | ((fl >> 5) & 2));
		if ((fl & 0x30) == 0x30)
			r->family = 5;
		return;
	}
	r->prefix_len = (uint8_t)(b[1] % (r->family == 4 ? 33 : 129));
	r->proto_mask &= 7;
	if (r->port_lo > r->port_hi) {
		uint16_t t = r->port_lo;

		r->port_lo = r->port_hi;
		r->port_hi = t;
	}
	/* Every other rule covers all ports: ICMP must meet some. */
	if (fl & 8) {
		r->port_lo = 0;
		r->port_hi = 65535;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct sl_policy_rule rules[FZ_MAX_RULES];
	struct sl_policy_table *t = NULL;
	uint32_t n, nids, i, valid = 1;
	uint8_t def;
	int r;

	if (size < 2)
		return 0;
	def = (data[0] & 1) ? SL_POLICY_DENY : SL_POLICY_ALLOW;
	nids = (uint32_t)(data[0] >> 1) + 1;
	n = data[1];
	data += 2;
	size -= 2;
	if (n > size / 11)
		n = (uint32_t)(size / 11);
	for (i = 0; i < n; i++) {
		read_rule(data + 11 * i, &rules[i]);
		valid &= (uint32_t)ref_valid(&rules[i], nids);
	}
	data += 11 * n;
	size -= 11 * n;
	r = sl_policy_compile(&t, rules, n, nids, def);
	if (!valid) {
		if (r != -EINVAL) {
			fprintf(stderr, "malformed policy accepted: %d\n", r);
			abort();
		}
		return 0;
	}
	if (r < 0) {
		fprintf(stderr, "valid policy refused: %d\n", r);
		abort();
	}
	for (; size >= 6; data += 6, size -= 6) {
		struct sl_policy_query q;
		uint8_t addr[16];
		uint32_t got_id, want_id;
		int got, want, pr = (data[0] >> 2) & 3;

		q.family = (data[0] & 1) ? 6 : 4;
		q.host = (data[0] & 2) != 0;
		q.proto = pr == 1 ? SL_PP_UDP : pr == 2 ? SL_PP_ICMP : SL_PP_TCP;
		q.has_port = q.proto != SL_PP_ICMP;
		q.port = q.has_port ? (uint16_t)((data[1] << 8) | data[2]) : 0;
		seed_addr(q.family, data + 3, data[5], addr);
		q.addr = addr;
		got = sl_policy_match(t, &q, &got_id);
		want = ref_match(rules, n, def, &q, &want_id);
		if (got != want || got_id != want_id) {
			fprintf(stderr, "mismatch: compiled %d/%u, reference %d/%u\n",
				got, got_id, want, want_id);
			abort();
		}
	}
	sl_policy_table_free(t);
	return 0;
}
