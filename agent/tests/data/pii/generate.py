#!/usr/bin/env python3
"""Deterministic generator of the labeled PII corpus described in README.md.

    python3 generate.py > corpus.jsonl

Standard library only, fixed seed: the output is byte-identical on every run.

Every record is built by concatenating pieces (plain text, or a (value, type) pair for
a labeled value), so the spans are known by construction and never searched for. Before
anything is printed, a self-check re-validates every span (Luhn and brand rules, mod-97
and country length, SSN ranges, octets, ipaddress parsing, JWT shape, AWS formats, ...)
and runs an independent, deliberately over-eager scanner over every line: anything in the
line that looks like a value of one of the 14 types under the README's rules must be
exactly a labeled span, and anything the README calls a look-alike must not be labeled.
A generated record whose random parts accidentally form an unlabeled match (a random
digit run that happens to be a Luhn-valid card, an IBAN group that reads like a `00`
phone number, ...) is drawn again; a template that cannot produce a clean record, or any
failure in the final pass, aborts the program without printing anything.
"""

import base64
import functools
import ipaddress
import json
import random
import re
import sys

SEED = 0x48E1DA11
R = random.Random(SEED)

TYPES = (
    "email", "ipv4", "ipv6", "card", "iban", "ssn", "phone", "jwt", "aws_access_key",
    "aws_secret_key", "bearer", "secret", "url_password", "private_key",
)

UP = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LO = UP.lower()
DG = "0123456789"
HEXL = "0123456789abcdef"
ALNUM = UP + LO + DG
B64 = ALNUM + "+/"
B64U = ALNUM + "-_"


def ri(a, b):
    return R.randint(a, b)


def ch(seq):
    return R.choice(seq)


def chance(p):
    return R.random() < p


def rs(alphabet, n):
    return "".join(R.choice(alphabet) for _ in range(n))


# --------------------------------------------------------------------------------------
# Record building: pieces are str (plain), (value, type) (labeled), lists (nested), None.
# --------------------------------------------------------------------------------------

def build(pieces):
    out, spans, pos = [], [], 0

    def walk(p):
        nonlocal pos
        if p is None:
            return
        if isinstance(p, str):
            out.append(p)
            pos += len(p)
        elif isinstance(p, tuple):
            value, typ = p
            assert typ in TYPES, typ
            assert value, "empty labeled value"
            spans.append((pos, pos + len(value), typ))
            out.append(value)
            pos += len(value)
        elif isinstance(p, list):
            for q in p:
                walk(q)
        else:
            raise TypeError(repr(p))
    walk(pieces)
    return "".join(out), spans


def join(items, sep):
    res = []
    for i, it in enumerate(items):
        if i:
            res.append(sep)
        res.append(it)
    return res


def unlabel(pieces):
    """The same text with every label dropped (for look-alike checks)."""
    text, _ = build(pieces)
    return text


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

FIRST = """alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy
rupert sybil trent victor walter yasmin zoe liam noah emma mia lucas leo nora ines hugo
chloe jonas lena mateo sofia arjun priya kenji yuki omar layla diego camila pierre amelie
lars freya marta pavel anya tomas elif kaan sean aoife ravi mei chen sara nina felix
oscar ruth ada alan linus greta""".split()
LAST = """smith jones garcia miller davis lopez wilson anderson thomas moore martin lee
perez white harris clark lewis walker hall young king wright scott green baker adams
nelson hill campbell mitchell roberts carter phillips evans turner torres parker collins
stewart morris murphy cook rogers morgan peterson cooper reed bailey bell gomez kelly
ward cox diaz richardson wood watson brooks muller schmidt dubois rossi novak kowalski
tanaka sato kim park nguyen singh patel silva santos okafor haddad ivanova""".split()
SYL = """ac me ex am ple cor pi zo ta ni lu ra do mi sa to ko ber lin tek net sys dat ova
ix ly fy go hub nor sol var qu ent ion bit mar kel fen tri pol arc""".split()
TLDS = """com com com org net io dev co de fr nl se ch info biz app cloud tech co.uk
com.au co.jp example""".split()
WORDS = """alpha bravo cobalt delta ember falcon garnet harbor indigo juniper kestrel lumen
maple nimbus onyx pepper quartz raven saffron timber umber velvet willow yonder zephyr
orchid cedar copper meadow river summit canyon prairie glacier tundra lagoon""".split()
SERVICES = """billing auth orders catalog gateway notifier ledger search profile checkout
inventory payments shipping reports webhooks scheduler mailer""".split()
RESOURCES = """users orders invoices carts items sessions accounts payments refunds
products reviews shipments coupons""".split()
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()


def first():
    return ch(FIRST)


def last():
    return ch(LAST)


def full_name():
    return first().capitalize() + " " + last().capitalize()


def word():
    return ch(WORDS)


def dom_label():
    return "".join(ch(SYL) for _ in range(ri(2, 3)))


def domain():
    sub = ch(["", "", "", "mail.", "corp.", "eu.", "us.", "mx1."])
    return sub + dom_label() + "." + ch(TLDS)


def hostname():
    """A dotless host name (used after URL userinfo so that pw@host is no e-mail)."""
    return ch(["db", "postgres", "redis", "cache", "mq", "rabbitmq", "mongo-0", "db-primary",
               "pg-main", "localhost", "mysql", "broker", "vault", "es-node-1", "minio"])


# --------------------------------------------------------------------------------------
# Time and look-alike noise (never PII)
# --------------------------------------------------------------------------------------

def rdt():
    return (ri(2023, 2025), ri(1, 12), ri(1, 28), ri(0, 23), ri(0, 59), ri(0, 59), ri(0, 999))


def iso_ts():
    y, mo, d, h, mi, s, ms = rdt()
    f = R.randrange(4)
    if f == 0:
        return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{ms:03d}Z"
    if f == 1:
        return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"
    if f == 2:
        return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{ri(0, 999999):06d}+00:00"
    return f"{y}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d},{ms:03d}"


def iso_ts_z():
    y, mo, d, h, mi, s, ms = rdt()
    return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{ms:03d}Z"


def clf_ts():
    y, mo, d, h, mi, s, _ = rdt()
    tz = ch(["+0000", "+0000", "-0700", "+0100", "+0530", "-0500"])
    return f"{d:02d}/{MONTHS[mo - 1]}/{y}:{h:02d}:{mi:02d}:{s:02d} {tz}"


def syslog_ts():
    _, mo, d, h, mi, s, _ = rdt()
    return f"{MONTHS[mo - 1]} {d:2d} {h:02d}:{mi:02d}:{s:02d}"


def pg_ts():
    y, mo, d, h, mi, s, ms = rdt()
    return f"{y}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}.{ms:03d} UTC"


def nginx_err_ts():
    y, mo, d, h, mi, s, _ = rdt()
    return f"{y}/{mo:02d}/{d:02d} {h:02d}:{mi:02d}:{s:02d}"


def apache_err_ts():
    y, mo, d, h, mi, s, _ = rdt()
    return f"{ch(DAYS)} {MONTHS[mo - 1]} {d:02d} {h:02d}:{mi:02d}:{s:02d}.{ri(100000, 999999)} {y}"


def http_date():
    y, mo, d, h, mi, s, _ = rdt()
    return f"{ch(DAYS)}, {d:02d} {MONTHS[mo - 1]} {y} {h:02d}:{mi:02d}:{s:02d} GMT"


def klog_ts():
    _, mo, d, h, mi, s, _ = rdt()
    return f"{mo:02d}{d:02d} {h:02d}:{mi:02d}:{s:02d}.{ri(0, 999999):06d}"


def epoch():
    return str(ri(1672531200, 1735689599))


def epoch_ms():
    return str(ri(1672531200000, 1735689599999))


def date_only():
    y, mo, d, *_ = rdt()
    return ch([f"{y}-{mo:02d}-{d:02d}", f"{d:02d}/{mo:02d}/{y}"])


def iso_date():
    y, mo, d, *_ = rdt()
    return f"{y}-{mo:02d}-{d:02d}"


def duration():
    f = R.randrange(7)
    if f == 0:
        return f"{ri(1, 999)}ms"
    if f == 1:
        return f"{ri(0, 59)}.{ri(0, 9)}s"
    if f == 2:
        return f"00:{ri(0, 59):02d}:{ri(0, 59):02d}.{ri(0, 999):03d}"
    if f == 3:
        return f"{ri(1, 9)}m{ri(0, 59)}s"
    if f == 4:
        return f"{ri(1, 900)}us"
    if f == 5:
        return f"{ri(0, 2)}.{ri(0, 999):03d}s"
    return f"{ri(10, 23)}:{ri(10, 59)}:{ri(10, 59)}"


def secs():
    return f"{ri(0, 4)}.{ri(0, 999):03d}"


def size_str():
    return ch([f"{ri(1, 999)}KB", f"{ri(1, 99)}.{ri(0, 9)}MB", f"{ri(1, 9)}.{ri(0, 99)}GiB",
               f"{ri(100, 99999)} bytes", f"{ri(1, 512)}Mi"])


def price():
    return ch([f"${ri(1, 999)}.{ri(0, 99):02d}", f"EUR {ri(1, 9)},{ri(100, 999)}.{ri(0, 99):02d}",
               f"{ri(1, 999)}.{ri(0, 99):02d} USD", f"GBP {ri(1, 99)}.{ri(0, 99):02d}"])


def status():
    return ch([200, 200, 200, 200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 404, 409, 422,
               429, 500, 502, 503, 504])


def port():
    return ri(1024, 65535)


def uuid4():
    h = rs(HEXL, 32)
    h = h[:12] + "4" + h[13:16] + ch("89ab") + h[17:]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def hexs(n):
    return rs(HEXL, n)


def git_sha(short=False):
    return hexs(ch([7, 8, 12])) if short else hexs(40)


def mac():
    sep = ch([":", ":", "-"])
    octs = [f"{ri(0, 255):02x}" for _ in range(6)]
    s = sep.join(octs)
    return s.upper() if chance(0.4) else s


def oid():
    base = ch(["1.3.6.1.4.1", "1.3.6.1.2.1", "2.5.4", "1.2.840.113549.1.1", "1.3.6.1.4.1.311.21"])
    return base + "".join(f".{ri(0, 99)}" for _ in range(ri(2, 5)))


def five_part():
    return ".".join(str(ri(0, 255)) for _ in range(ch([5, 5, 6])))


def bad_octets():
    parts = [ri(0, 255) for _ in range(4)]
    for i in R.sample(range(4), ri(1, 2)):
        parts[i] = ri(256, 999)
    return ".".join(str(p) for p in parts)


def version4():
    return f"{ri(1, 20)}.{ri(0, 20)}.{ri(0, 20)}.{ri(0, 99)}"


def version3():
    return f"{ri(0, 20)}.{ri(0, 40)}.{ri(0, 99)}"


def version_kv():
    """A dotted quad that the README says is a version, not an address."""
    q = version4() if chance(0.6) else f"10.{ri(0, 9)}.{ri(0, 9)}.{ri(1, 99)}"
    key = ch(["version=", "version=", "ver=", "ver: ", "Version: ", "vsn=", "v=", "VERSION=",
              "version ", "Ver: ", "version: "])
    return key + q


def pod_name():
    app = ch(["web", "api", "worker", "billing", "auth-svc", "ingress-nginx-controller",
              "coredns", "redis", "orders-api", "frontend"])
    h = rs("bcdfghjklmnpqrstvwxz2456789", 10)
    return f"{app}-{h}-{rs('bcdfghjklmnpqrstvwxz2456789', 5)}"


def b64blob(length=None):
    """Base64 of a length other than 40 (and not leaving a 40-character run)."""
    while True:
        n = length or ch([12, 16, 24, 28, 32, 44, 56, 64, 88])
        raw = bytes(R.getrandbits(8) for _ in range(n))
        s = base64.b64encode(raw).decode()
        if len(s.rstrip("=")) != 40 and len(s) != 40:
            return s


def sha256_hex():
    return hexs(64)


def luhn_ok(d):
    total = 0
    for i, c in enumerate(reversed(d)):
        x = int(c)
        if i % 2:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0


def luhn_complete(partial):
    for c in DG:
        if luhn_ok(partial + c):
            return partial + c
    raise AssertionError


def luhn_invalid16():
    while True:
        d = ch("3456") + rs(DG, 15)
        if not luhn_ok(d):
            return d


def luhn_valid_noprefix(n=16):
    return luhn_complete(ch("1789") + rs(DG, n - 2))


def order_id():
    return ch(["ORD-", "INV-", "PO-", "TX"]) + str(ri(10 ** 7, 10 ** 9))


def bad_ssn():
    f = R.randrange(5)
    if f == 0:
        return f"000-{ri(1, 99):02d}-{ri(1, 9999):04d}"
    if f == 1:
        return f"666-{ri(1, 99):02d}-{ri(1, 9999):04d}"
    if f == 2:
        return f"{ri(900, 999)}-{ri(1, 99):02d}-{ri(1, 9999):04d}"
    if f == 3:
        return f"{ri(1, 665):03d}-00-{ri(1, 9999):04d}"
    return f"{ri(1, 665):03d}-{ri(1, 99):02d}-0000"


def masked():
    return ch(["****", "********", "xxxxxxxx", "XXXXXXXX", "xxxx", "******"])


# --------------------------------------------------------------------------------------
# PII values
# --------------------------------------------------------------------------------------

def email():
    f, l = first(), last()
    local = ch([f, f + "." + l, f[0] + l, f + "_" + l, f + l + str(ri(1, 99)), f + "+" + word(),
                f + "-" + l, l + "." + f, f.capitalize() + "." + l.capitalize(),
                f + "." + l + str(ri(1, 9999)), "ops", "support", "noreply", "billing-team",
                f + "." + l[0]])
    return (local + "@" + domain(), "email")


def ipv4():
    f = R.random()
    if f < 0.2:
        s = f"10.{ri(0, 255)}.{ri(0, 255)}.{ri(1, 254)}"
    elif f < 0.3:
        s = f"172.{ri(16, 31)}.{ri(0, 255)}.{ri(1, 254)}"
    elif f < 0.42:
        s = f"192.168.{ri(0, 255)}.{ri(1, 254)}"
    elif f < 0.6:
        s = ch(["192.0.2", "198.51.100", "203.0.113"]) + f".{ri(1, 254)}"
    elif f < 0.64:
        s = ch(["127.0.0.1", "127.0.0.1", "127.0.1.1", "0.0.0.0", "255.255.255.255"])
    else:
        a = ch([x for x in range(1, 224) if x not in (10, 127)])
        s = f"{a}.{ri(0, 255)}.{ri(0, 255)}.{ri(0, 255)}"
    return (s, "ipv4")


def _v6_groups():
    f = R.randrange(6)
    if f == 0:
        g = [0x2001, 0xDB8] + [0] * 6
        for i in R.sample(range(2, 8), ri(1, 4)):
            g[i] = R.getrandbits(16) if chance(0.5) else ri(1, 255)
    elif f == 1:
        g = [0xFE80, 0, 0, 0] + [R.getrandbits(16) for _ in range(4)]
        if chance(0.3):
            g[4:7] = [0, 0, 0]
    elif f == 2:
        g = [ch([0x2A00, 0x2A02, 0x2A03, 0x2600, 0x2606, 0x2804, 0x2401]) | ri(0, 15)]
        g += [R.getrandbits(16) for _ in range(7)]
        z = ri(2, 6)
        for i in range(z, min(8, z + ri(0, 3))):
            g[i] = 0
    elif f == 3:
        g = [0xFD00 | ri(0, 255)] + [R.getrandbits(16) for _ in range(3)] + [0, 0, 0, ri(1, 9999)]
    elif f == 4:
        g = [0x2001, 0xDB8, R.getrandbits(16), 0, 0, 0, 0, ri(1, 65535)]
    else:
        g = [0x2001, 0xDB8, 0x85A3, 0, 0, 0x8A2E, 0x370, 0x7334]
        g[2] = R.getrandbits(16)
        g[7] = R.getrandbits(16)
    return g


def _v6_compress(parts):
    """RFC 5952 style compression of pre-rendered groups (longest zero run >= 2)."""
    best, bl, i = -1, 0, 0
    while i < 8:
        if int(parts[i], 16) == 0:
            j = i
            while j < 8 and int(parts[j], 16) == 0:
                j += 1
            if j - i > bl:
                best, bl = i, j - i
            i = j
        else:
            i += 1
    if bl < 2:
        return ":".join(parts)
    return ":".join(parts[:best]) + "::" + ":".join(parts[best + bl:])


def ipv6():
    f = R.random()
    if f < 0.07:
        s = "::1"
    elif f < 0.12:
        s = "fe80::1"
    elif f < 0.2:
        s = ch(["::ffff:", "::ffff:", "::FFFF:"]) + ipv4()[0]
    else:
        g = _v6_groups()
        rep = R.randrange(5)
        if rep == 0:      # full, leading zeros
            s = ":".join(f"{x:04x}" for x in g)
        elif rep == 1:    # full, no leading zeros
            s = ":".join(f"{x:x}" for x in g)
        elif rep == 2:    # compressed with leading zeros kept in the other groups
            s = _v6_compress([f"{x:04x}" for x in g])
        else:             # canonical compressed
            s = str(ipaddress.IPv6Address(sum(x << (16 * (7 - i)) for i, x in enumerate(g))))
        if chance(0.25):
            s = s.upper()
    if not any(c.isdigit() for c in s):
        return ipv6()
    return (s, "ipv6")


def ipv6_zoned():
    """A link-local address with a zone id; the zone is not part of the span."""
    if chance(0.3):
        v = "fe80::1"
    else:
        g = [0xFE80, 0, 0, 0] + [R.getrandbits(16) for _ in range(4)]
        v = str(ipaddress.IPv6Address(sum(x << (16 * (7 - i)) for i, x in enumerate(g))))
    return [(v, "ipv6"), "%" + ch(["eth0", "eth1", "ens3", "wlan0", "en0", "bond0", "2"])]


def ip_any(p6=0.25):
    return ipv6() if chance(p6) else ipv4()


def ip_port(p6=0.25):
    """An address with a port: 1.2.3.4:5678 or [2001:db8::1]:5678."""
    v = ip_any(p6)
    if v[1] == "ipv6":
        return ["[", v, f"]:{port()}"]
    return [v, f":{port()}"]


def card_digits(brand=None):
    brand = brand or ch(["visa", "visa", "mc", "mc", "amex", "discover"])
    if brand == "visa":
        n = ch([16, 16, 16, 16, 13, 19])
        pre = "4"
    elif brand == "mc":
        n = 16
        pre = str(ri(51, 55)) if chance(0.6) else str(ri(2221, 2720))
    elif brand == "amex":
        n = 15
        pre = ch(["34", "37"])
    else:
        n = ch([16, 16, 16, 19])
        pre = ch(["6011", "65", str(ri(644, 649))])
    return brand, luhn_complete(pre + rs(DG, n - len(pre) - 1))


def card_format(d, fmt=None):
    n = len(d)
    fmt = fmt or ch(["compact", "space", "dash", "space"])
    if fmt == "compact" or n not in (15, 16):
        return d
    sep = " " if fmt == "space" else "-"
    if n == 15:
        return sep.join([d[:4], d[4:10], d[10:]])
    return sep.join([d[i:i + 4] for i in range(0, 16, 4)])


def card(brand=None, fmt=None):
    _, d = card_digits(brand)
    return (card_format(d, fmt), "card")


IBAN_SPEC = {
    "AD": "4n4n12c", "AE": "3n16n", "AT": "5n11n", "BE": "3n7n2n", "BG": "4a4n2n8c",
    "BH": "4a14c", "BR": "8n5n10n1a1c", "CH": "5n12c", "CY": "3n5n16c", "CZ": "4n6n10n",
    "DE": "8n10n", "DK": "4n9n1n", "EE": "2n2n11n1n", "ES": "4n4n1n1n10n", "FI": "3n11n",
    "FR": "5n5n11c2n", "GB": "4a6n8n", "GR": "3n4n16c", "HR": "7n10n", "HU": "3n4n1n15n1n",
    "IE": "4a6n8n", "IL": "3n3n13n", "IS": "4n2n6n10n", "IT": "1a5n5n12c", "JO": "4a4n18c",
    "KW": "4a22c", "LI": "5n12c", "LT": "5n11n", "LU": "3n13c", "LV": "4a13c",
    "MC": "5n5n11c2n", "MT": "4a5n18c", "NL": "4a10n", "NO": "4n6n1n", "PL": "8n16n",
    "PT": "4n4n11n2n", "QA": "4a21c", "RO": "4a16c", "SA": "2n18c", "SE": "3n16n1n",
    "SI": "5n8n2n", "SK": "4n6n10n", "SM": "1a5n5n12c", "TR": "5n1n16c",
}


def _spec_parts(spec):
    return [(int(n), t) for n, t in re.findall(r"(\d+)([anc])", spec)]


IBAN_LEN = {cc: 4 + sum(n for n, _ in _spec_parts(s)) for cc, s in IBAN_SPEC.items()}
IBAN_COUNTRIES = sorted(IBAN_SPEC)


def iban_mod(s):
    r = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in r)) % 97


def iban_valid(compact):
    cc = compact[:2]
    return (cc in IBAN_LEN and len(compact) == IBAN_LEN[cc] and compact[2:4].isdigit()
            and re.fullmatch(r"[A-Z0-9]+", compact) is not None and iban_mod(compact) == 1)


def iban_compact(cc=None):
    cc = cc or ch(IBAN_COUNTRIES)
    bban = ""
    for n, t in _spec_parts(IBAN_SPEC[cc]):
        alpha = {"n": DG, "a": UP, "c": UP + DG + DG}[t]
        bban += rs(alpha, n)
    chk = 98 - iban_mod(cc + "00" + bban)
    s = f"{cc}{chk:02d}{bban}"
    assert iban_valid(s), s
    return s


def iban_group(s):
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


def iban(grouped=None):
    s = iban_compact()
    if grouped is None:
        grouped = chance(0.45)
    return (iban_group(s) if grouped else s, "iban")


def bad_iban():
    s = iban_compact()
    while True:
        chk = f"{ri(0, 99):02d}"
        t = s[:2] + chk + s[4:]
        if iban_mod(t) != 1:
            return iban_group(t) if chance(0.4) else t


def ssn_digits():
    while True:
        a = ri(1, 899)
        if a != 666:
            return f"{a:03d}", f"{ri(1, 99):02d}", f"{ri(1, 9999):04d}"


def ssn():
    a, g, s = ssn_digits()
    return (f"{a}-{g}-{s}", "ssn")


def ssn_bare():
    a, g, s = ssn_digits()
    return (a + g + s, "ssn")


def _d(n):
    return rs(DG, n)


def _nz(n):
    return ch("23456789") + rs(DG, n - 1)


def phone_us_parts():
    return _nz(3), _nz(3), _d(4)


def phone():
    f = R.randrange(22)
    if f <= 5:  # E.164, grouped or not
        cc = R.randrange(12)
        if cc == 0:
            a, b, c = phone_us_parts()
            g = ["1", a, b, c]
        elif cc == 1:
            g = ["44", "20", _nz(4), _d(4)] if chance(0.5) else ["44", "7" + _d(3), _d(6)]
        elif cc == 2:
            g = ["33", ch("1234567"), _d(2), _d(2), _d(2), _d(2)]
        elif cc == 3:
            g = ["49", ch(["30", "40", "89", "69"]), _nz(ch([7, 8]))] if chance(0.5) else \
                ["49", "1" + ch("567") + _d(1), _nz(ch([7, 8]))]
        elif cc == 4:
            g = ["34", ch("6789") + _d(2), _d(3), _d(3)]
        elif cc == 5:
            g = ["39", "0" + _d(1), _d(4), _d(4)] if chance(0.5) else ["39", "3" + _d(2), _d(3), _d(4)]
        elif cc == 6:
            g = ["31", "6", _d(8)]
        elif cc == 7:
            g = ["61", ch("2378"), _d(4), _d(4)] if chance(0.5) else ["61", "4" + _d(2), _d(3), _d(3)]
        elif cc == 8:
            g = ["91", ch("6789") + _d(4), _d(5)]
        elif cc == 9:
            g = ["55", _nz(2), "9" + _d(4), _d(4)]
        elif cc == 10:
            g = ["81", ch(["3", "6", "90", "80"]), _d(4), _d(4)]
        else:
            g = ["65", ch("689") + _d(3), _d(4)]
        style = R.randrange(4)
        if style == 0:
            s = "+" + "".join(g)
        elif style == 1:
            s = "+" + "-".join(g)
        else:
            s = "+" + " ".join(g)
    elif f <= 7:  # 00 international prefix, grouped
        g = ch([["44", "20", _nz(4), _d(4)], ["33", ch("1234567"), _d(2), _d(2), _d(2), _d(2)],
                ["49", ch(["30", "89"]), _nz(8)], ["41", ch(["44", "22", "31"]), _nz(3), _d(2), _d(2)],
                ["1", *phone_us_parts()], ["34", ch("69") + _d(2), _d(3), _d(3)]])
        s = "00" + g[0] + " " + " ".join(g[1:])
    elif f <= 14:  # US national
        a, b, c = phone_us_parts()
        s = ch([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"{a} {b} {c}", f"1-{a}-{b}-{c}",
                f"({a}) {b}-{c}"])
    elif f <= 18:  # UK national
        if chance(0.5):
            s = f"02{ch('03489')} {ch('3678')}{_d(3)} {_d(4)}"
        else:
            s = f"07{ch('1234579')}{_d(2)} {_d(6)}"
    else:  # French national
        sep = ch([" ", " ", "."])
        s = "0" + ch("1234567") + "".join(sep + _d(2) for _ in range(4))
    return (s, "phone")


def b64u(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt():
    alg = ch(["HS256", "HS256", "HS256", "RS256", "ES256", "ES256", "HS512"])
    hdr = ch([f'{{"alg":"{alg}","typ":"JWT"}}', f'{{"typ":"JWT","alg":"{alg}"}}',
              f'{{"alg":"{alg}","typ":"JWT","kid":"{hexs(8)}"}}', f'{{"alg":"{alg}"}}'])
    iat = int(epoch())
    claims = [f'"sub":"{ch([str(ri(1, 10 ** 6)), uuid4(), first()])}"', f'"iat":{iat}',
              f'"exp":{iat + ch([300, 900, 3600, 86400])}']
    if chance(0.5):
        claims.append(f'"email":"{email()[0]}"')
    if chance(0.5):
        claims.append(f'"iss":"https://auth.{domain()}/"')
    if chance(0.4):
        claims.append(f'"scope":"{ch(["read", "read write", "openid profile email", "admin"])}"')
    payload = "{" + ",".join(claims) + "}"
    nsig = {"HS256": 32, "HS512": 64, "RS256": 256, "ES256": 64}[alg]
    sig = b64u(bytes(R.getrandbits(8) for _ in range(nsig)))
    return (b64u(hdr.encode()) + "." + b64u(payload.encode()) + "." + sig, "jwt")


def aws_key_id():
    # "A3T?" is not generated: the README's "?" reads as a wildcard or as "optional T"
    pre = ch(["AKIA", "AKIA", "AKIA", "AKIA", "ASIA", "ASIA", "ABIA", "ACCA"])
    return (pre + rs(UP + "234567" + DG, 16), "aws_access_key")


def aws_secret():
    while True:
        s = rs(B64 + ALNUM, 40)
        if any(c in UP for c in s) and any(c in LO for c in s) and any(c in DG for c in s):
            return (s, "aws_secret_key")


def bearer_token():
    f = R.randrange(7)
    if f == 0:
        s = rs(ALNUM, ri(24, 64))
    elif f == 1:
        s = ch(["ghp_", "gho_", "ghs_"]) + rs(ALNUM, 36)
    elif f == 2:
        s = ch(["sk_live_", "sk_test_", "rk_live_"]) + rs(ALNUM, ri(24, 32))
    elif f == 3:
        s = hexs(ch([32, 48, 64]))
    elif f == 4:
        s = rs(ALNUM, 8) + "-" + rs(ALNUM, 12) + "-" + rs(ALNUM, 16)
    elif f == 5:
        s = "pat_" + rs(ALNUM + "_", ri(30, 50)) + rs(ALNUM, 1)
    else:
        s = rs(B64U, ri(30, 60)) + rs(ALNUM, 1)
    if s[0] in "-_":
        s = "t" + s
    return (s, "bearer")


SECRET_PUNCT = "!$^*_~-"


def secret_value(url_safe=False, spaces=False):
    f = R.randrange(9)
    if spaces and chance(0.35):
        s = " ".join(word() for _ in range(ri(3, 5)))
        if chance(0.5):
            s += " " + str(ri(1, 99))
        return (s, "secret")
    if f == 0:
        s = rs(ALNUM, ri(8, 18)) + ch(SECRET_PUNCT) + rs(ALNUM, ri(1, 4))
    elif f == 1:
        s = word().capitalize() + ch(["_", "-", "!", "$", ""]) + str(ri(10, 9999)) + word()
    elif f == 2:
        s = hexs(32)
    elif f == 3:
        s = ch(["sk_live_", "sk_test_", "pk_live_", "whsec_"]) + rs(ALNUM, 24)
    elif f == 4:
        s = ch(["ghp_", "glpat-", "xoxb-", "npm_"]) + rs(ALNUM, ri(20, 36))
    elif f == 5:
        s = rs(ALNUM, ri(20, 48))
    elif f == 6:
        s = rs(B64U, ri(24, 43)) + rs(ALNUM, 1)
    elif f == 7:
        s = ch(["hunter", "s3cr3t", "changeme", "P@", "Passw0rd", "letmein", "Tr0ub4dor"]) \
            + rs(ALNUM, ri(2, 6))
        s = s.replace("@", "a")
    else:
        s = rs(LO + DG, 6) + ch(SECRET_PUNCT) + rs(UP + DG, 6)
    if url_safe:
        s = "".join(c if c in ALNUM + "-_~" else "_" for c in s)
    if s[0] in "-_~!$^*":
        s = "k" + s
    if not any(c.isalpha() for c in s):
        s = "q" + s
    return (s, "secret")


def url_password():
    s = ch([rs(ALNUM, ri(6, 20)), word() + str(ri(1, 9999)), rs(ALNUM, 5) + ch("-_~!") + rs(ALNUM, 6),
            ch(["s3cr3t", "hunter2", "guest", "changeme", "postgres", "Sup3rS3cret"]) + rs(DG, ri(0, 3))])
    return (s, "url_password")


PEM_BODY_START = {
    "RSA PRIVATE KEY": "MIIEowIBAAKCAQEA",
    "EC PRIVATE KEY": "MHcCAQEEI",
    "PRIVATE KEY": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    "OPENSSH PRIVATE KEY": "b3BlbnNzaC1rZXktdjEAAAAA",
    "ENCRYPTED PRIVATE KEY": "MIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI",
    "DSA PRIVATE KEY": "MIIBuwIBAAKBgQ",
    "CERTIFICATE": "MIID",
    "PUBLIC KEY": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
    "RSA PUBLIC KEY": "MIIBCgKCAQEA",
}
PEM_LINES = {  # shortened bodies (the test reads markers, not DER) to keep the corpus small
    "RSA PRIVATE KEY": (4, 9), "EC PRIVATE KEY": (2, 3), "PRIVATE KEY": (4, 9),
    "OPENSSH PRIVATE KEY": (4, 7), "ENCRYPTED PRIVATE KEY": (4, 8), "DSA PRIVATE KEY": (4, 6),
    "CERTIFICATE": (4, 8), "PUBLIC KEY": (5, 6), "RSA PUBLIC KEY": (4, 5),
}


def pem_body_lines(label):
    width = 70 if label.startswith("OPENSSH") else 64
    lo, hi = PEM_LINES[label]
    n = ri(lo, hi)
    start = PEM_BODY_START[label]
    body = start + rs(B64, width * n - len(start) - ri(0, width - 8))
    rem = len(body) % 4
    if rem:
        body = body[: len(body) - rem]
    if chance(0.5):
        body = body[:-1] + "="
    return [body[i:i + width] for i in range(0, len(body), width)]


def pem_private_label():
    return ch(["RSA PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "PRIVATE KEY",
               "OPENSSH PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY"])


def pem_text(label, nl="\n", end=True):
    lines = [f"-----BEGIN {label}-----"] + pem_body_lines(label)
    if end:
        lines.append(f"-----END {label}-----")
    return nl.join(lines)


def private_key(nl="\n", end=True):
    return (pem_text(pem_private_label(), nl, end), "private_key")


# --------------------------------------------------------------------------------------
# Shared fragments
# --------------------------------------------------------------------------------------

def chrome_ver():
    return ch([f"{ri(109, 131)}.0.0.0", f"{ri(109, 131)}.0.0.0",
               f"{ri(109, 131)}.0.{ri(5000, 6999)}.{ri(10, 250)}"])


def user_agent():
    f = R.randrange(16)
    cv = chrome_ver()
    if f <= 3:
        return (f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{cv} Safari/537.36")
    if f == 4:
        return (f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{cv} Safari/537.36")
    if f == 5:
        return (f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{cv} Safari/537.36 Edg/{ri(109, 131)}.0.{ri(1000, 2999)}.{ri(10, 99)}")
    if f == 6:
        v = ri(110, 133)
        return f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"
    if f == 7:
        return (f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_{ri(0, 6)} like Mac OS X) AppleWebKit/605.1.15 "
                f"(KHTML, like Gecko) Version/17.{ri(0, 6)} Mobile/15E148 Safari/604.1")
    if f == 8:
        return (f"Mozilla/5.0 (Linux; Android {ri(11, 15)}; Pixel {ri(5, 9)}) AppleWebKit/537.36 "
                f"(KHTML, like Gecko) Chrome/{cv} Mobile Safari/537.36")
    if f == 9:
        return (f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{cv} Safari/537.36 OPR/{ri(100, 115)}.0.0.0")
    if f == 10:
        return (f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{cv} YaBrowser/{ri(22, 24)}.{ri(1, 12)}.0.0 Safari/537.36")
    return ch([f"curl/{ri(7, 8)}.{ri(0, 9)}.{ri(0, 1)}", f"python-requests/2.{ri(25, 32)}.0",
               "Go-http-client/1.1", "Go-http-client/2.0", f"okhttp/4.{ri(9, 12)}.0",
               f"kube-probe/1.{ri(25, 31)}", f"Prometheus/2.{ri(40, 55)}.1", "ELB-HealthChecker/2.0",
               "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
               f"Wget/1.21.{ri(1, 4)}", f"Apache-HttpClient/4.5.{ri(10, 14)} (Java/17.0.{ri(1, 12)})",
               f"Slack/4.{ri(30, 41)}.{ri(100, 199)} Electron/{ri(25, 30)}.1.0 Chrome/{cv}"])


def method():
    return ch(["GET"] * 6 + ["POST", "POST", "PUT", "DELETE", "PATCH", "HEAD"])


def api_path():
    f = R.randrange(10)
    if f <= 3:
        return f"/api/v{ri(1, 3)}/{ch(RESOURCES)}/{ri(1, 999999)}"
    if f == 4:
        return f"/api/v{ri(1, 3)}/{ch(RESOURCES)}/{uuid4()}"
    if f == 5:
        return ch(["/static/js/app.", "/assets/main.", "/_next/static/chunks/"]) + hexs(8) + ".js"
    if f == 6:
        return ch(["/assets/icon@2x.png", "/img/logo@2x.png", "/img/avatar@3x.png", "/favicon.ico",
                   "/assets/hero@2x.png"])
    if f == 7:
        return ch(["/healthz", "/readyz", "/metrics", "/login", "/logout", "/oauth/token", "/search",
                   "/checkout", "/webhooks/stripe", "/graphql"])
    return f"/{ch(RESOURCES)}"


def noise_param():
    return ch([f"page={ri(1, 40)}", f"limit={ch([10, 20, 50, 100])}", "sort=desc", f"q={word()}",
               "lang=en", f"max_tokens={ch([256, 512, 1024, 4096])}", "token_type=Bearer",
               f"utm_source={word()}", f"id={ri(1, 10 ** 6)}", f"ts={epoch()}", f"v={version3()}",
               f"cb={hexs(8)}", f"request_id={uuid4()}", "password_changed=true", f"tokens={ri(1, 9)}",
               f"offset={ri(0, 500)}", f"format={ch(['json', 'csv'])}"])


def sensitive_param():
    f = R.randrange(10)
    if f == 0:
        return ["api_key=", secret_value(url_safe=True)]
    if f == 1:
        return ["token=", jwt()]
    if f == 2:
        return ["token=", secret_value(url_safe=True)]
    if f in (3, 4):
        return ["email=", email()]
    if f == 5:
        return ["access_token=", jwt()]
    if f == 6:
        return ["apikey=", secret_value(url_safe=True)]
    if f == 7:
        return ["password=", secret_value(url_safe=True)]
    if f == 8:
        return [ch(["session_token=", "refresh_token=", "auth_token=", "id_token="]),
                secret_value(url_safe=True) if chance(0.5) else jwt()]
    return [ch(["client_secret=", "secret="]), secret_value(url_safe=True)]


def query(pos, nmin=1, nmax=4):
    params = []
    for _ in range(ri(nmin, nmax)):
        params.append(sensitive_param() if pos and chance(0.55) else noise_param())
    if pos and not any(isinstance(p, list) for p in params):
        params[R.randrange(len(params))] = sensitive_param()
    if params[-1] == "token_type=Bearer":
        # "token_type=Bearer HTTP/1.1" would make the next word the token after "Bearer "
        params.append(f"page={ri(1, 9)}")
    return ["?", join(params, "&")]


def xff(n=None):
    n = n or ri(2, 4)
    return join([ip_any(0.3) for _ in range(n)], ", ")


def service():
    return ch(SERVICES)


def level():
    return ch(["info", "info", "info", "warn", "error", "debug"])


# --------------------------------------------------------------------------------------
# JSON and logfmt rendering with labeled values inside
# --------------------------------------------------------------------------------------

class O:
    """A JSON object: ordered (key, value) pairs."""
    def __init__(self, *pairs):
        self.pairs = [p for p in pairs if p is not None]


class S:
    """A JSON string made of pieces (plain and labeled)."""
    def __init__(self, *pieces):
        self.pieces = list(pieces)


class Raw:
    def __init__(self, text):
        self.text = text


def _plain_ok(s):
    assert json.dumps(s) == '"' + s + '"', s
    return s


def jv(v, seps):
    if isinstance(v, O):
        return jobj(v, seps)
    if isinstance(v, S):
        text, _ = build(v.pieces)
        _plain_ok(text)
        return ['"', v.pieces, '"']
    if isinstance(v, tuple):
        _plain_ok(v[0])
        return ['"', v, '"']
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, list):
        return ["[", join([jv(x, seps) for x in v], seps[0]), "]"]
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    return '"' + _plain_ok(v) + '"'


def jobj(o, seps):
    return ["{", join([['"' + _plain_ok(k) + '"', seps[1], jv(v, seps)] for k, v in o.pairs], seps[0]),
            "}"]


def J(o):
    seps = (",", ":") if chance(0.6) else (", ", ": ")
    return jobj(o, seps)


def lf(*pairs):
    """logfmt: values that contain a space are quoted."""
    out = []
    for kv in pairs:
        if kv is None:
            continue
        k, v = kv
        if isinstance(v, S):
            text = unlabel(v.pieces)
            q = " " in text or '"' in text
            out.append([k, "=", '"' if q else "", v.pieces, '"' if q else ""])
        elif isinstance(v, tuple):
            q = " " in v[0]
            out.append([k, "=", '"' if q else "", v, '"' if q else ""])
        else:
            v = str(v)
            q = " " in v
            out.append([k, "=", '"' + v + '"' if q else v])
    return join(out, " ")


# --------------------------------------------------------------------------------------
# Span validation (content of each labeled value)
# --------------------------------------------------------------------------------------

EMAIL_FULL = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}")
AKID_RE = re.compile(r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}")
PHONE_FULL = [
    re.compile(r"\+\d+(?:[ -]\d+)*"),                       # E.164, grouped or not
    re.compile(r"00\d{1,3}(?: \d+)+"),                      # 00 international prefix, grouped
    re.compile(r"\([2-9]\d{2}\) [2-9]\d{2}-\d{4}"),
    re.compile(r"[2-9]\d{2}-[2-9]\d{2}-\d{4}"),
    re.compile(r"[2-9]\d{2}\.[2-9]\d{2}\.\d{4}"),
    re.compile(r"[2-9]\d{2} [2-9]\d{2} \d{4}"),
    re.compile(r"1-[2-9]\d{2}-[2-9]\d{2}-\d{4}"),
    re.compile(r"0\d{2} \d{4} \d{4}"),                      # UK 020 7946 0958
    re.compile(r"07\d{3} \d{6}"),                           # UK 07700 900123
    re.compile(r"0[1-9](?: \d{2}){4}"),                     # FR 06 12 34 56 78
    re.compile(r"0[1-9](?:\.\d{2}){4}"),                    # FR 06.12.34.56.78
    re.compile(r"[2-9]\d{2} [2-9]\d{2}-\d{4}"),                # US 415 555-2671
    re.compile(r"1 \([2-9]\d{2}\) [2-9]\d{2}-\d{4}"),          # US 1 (415) 555-2671
    re.compile(r"\([2-9]\d{2}\)[2-9]\d{2}-\d{4}"),             # US (415)555-2671
]
# National numbers with a trunk prefix (9 to 12 digits, checked apart).
TRUNK_FULL = [
    re.compile(r"0[1-9]\d{0,3}(?:[ -]\d{2,})+"),             # 030 12345678, 08-123 456 78
    re.compile(r"0[1-9]\d{0,3}/\d{2,}(?:[ -]\d{2,})*"),       # 030/1234567
    re.compile(r"\(0[1-9]\d{0,3}\) ?\d{2,}(?:[ -]\d{2,})*"),   # (030) 1234567
    re.compile(r"0[1-9]\d{0,3}(?:\.\d{2,})+"),               # 01.23.45.67.89
]
# National numbers without a trunk prefix, only after a phone key (8 to 12 digits).
GROUPED_FULL = [re.compile(r"\d{2,4}(?: \d{2,4})+"), re.compile(r"\d{2,4}(?:-\d{2,4})+"),
                re.compile(r"\d{2,4}(?:\.\d{2,4})+")]
PHONE_WORDS = ("phone", "mobile", "msisdn", "telefon")
PHONE_NAMES = ("tel", "fax", "cell", "handy", "mobil", "gsm", "tlf")


def phone_context(prefix):
    """Whether a number after `prefix` is the value of a phone field (README rule)."""
    m = re.search(r"(?:^|[^A-Za-z0-9_.-])([A-Za-z0-9_.-]{1,40})[\"' =:]{1,4}$", prefix)
    if not m:
        return False
    # The separators are at most four characters, and the name is what comes before them.
    sep = re.search(r"[\"' =:]{1,4}$", prefix).group()
    name_end = len(prefix) - len(sep)
    n = re.search(r"[A-Za-z0-9_.-]{1,40}$", prefix[:name_end])
    if not n:
        return False
    name = re.sub(r"[^A-Za-z0-9]", "", n.group()).lower()
    if any(w in name for w in PHONE_WORDS):
        return True
    base = name
    for suf in ("no", "nr"):
        if name.endswith(suf) and len(name) > len(suf):
            base = name[:-len(suf)]
            break
    return base in PHONE_NAMES


def is_trunk(v):
    return any(p.fullmatch(v) for p in TRUNK_FULL) and 9 <= sum(c.isdigit() for c in v) <= 12


EMAIL_PCT_UNIT = r"(?:[A-Za-z0-9_+-]|%2[BbDdEe]|%5[Ff])"
EMAIL_PCT = re.compile(EMAIL_PCT_UNIT + r"+(?:\." + EMAIL_PCT_UNIT + r"+)*%40"
                       r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}")


def card_brand(d):
    n = len(d)
    if d[0] == "4" and n in (13, 16, 19):
        return "visa"
    if n == 16 and (51 <= int(d[:2]) <= 55 or 2221 <= int(d[:4]) <= 2720):
        return "mc"
    if n == 15 and d[:2] in ("34", "37"):
        return "amex"
    if 16 <= n <= 19 and (d.startswith("6011") or 644 <= int(d[:3]) <= 649 or d.startswith("65")):
        return "discover"
    return None


def is_card_digits(d):
    return d.isdigit() and 13 <= len(d) <= 19 and card_brand(d) is not None and luhn_ok(d)


def ssn_valid(a, g, s):
    a, g, s = int(a), int(g), int(s)
    return a != 0 and a != 666 and a < 900 and g != 0 and s != 0


@functools.lru_cache(maxsize=None)
def v6_parse(s):
    try:
        ipaddress.IPv6Address(s)
        return True
    except ValueError:
        return False


def validate_span(text, s, e, t):
    v = text[s:e]
    errs = []

    def bad(msg):
        errs.append(f"{t} {v!r}: {msg}")

    if t == "email":
        if not EMAIL_FULL.fullmatch(v) and not EMAIL_PCT.fullmatch(v):
            bad("not an address")
    elif t == "ipv4":
        parts = v.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 and (p == "0" or p[0] != "0")
                                      for p in parts):
            bad("not a dotted quad")
        else:
            ipaddress.IPv4Address(v)
    elif t == "ipv6":
        if not v6_parse(v) or not any(c.isdigit() for c in v) or "%" in v or "[" in v:
            bad("not an IPv6 address")
    elif t == "card":
        seps = set(c for c in v if not c.isdigit())
        d = re.sub(r"[ -]", "", v)
        if not seps <= {" ", "-"} or len(seps) > 1 or not is_card_digits(d):
            bad("not a card")
        elif seps:
            groups = [len(x) for x in re.split(r"[ -]", v)]
            if groups not in ([4, 4, 4, 4], [4, 6, 5]):
                bad("bad grouping")
            if groups == [4, 6, 5] and card_brand(d) != "amex":
                bad("4-6-5 grouping for a non-Amex")
    elif t == "iban":
        compact = v.replace(" ", "")
        if not iban_valid(compact):
            bad("invalid IBAN")
        if " " in v and v != iban_group(compact):
            bad("bad grouping")
    elif t == "ssn":
        m = re.fullmatch(r"(\d{3})-(\d{2})-(\d{4})", v) or re.fullmatch(r"(\d{3})(\d{2})(\d{4})", v)
        if not m or not ssn_valid(*m.groups()):
            bad("not a valid SSN")
        elif "-" not in v and not re.search(r'(?:^|[^A-Za-z0-9_])ssn"?\s*[=:]\s*"?$', text[:s]):
            bad("bare SSN not the value of a key named ssn")
    elif t == "phone":
        grouped = any(p.fullmatch(v) for p in GROUPED_FULL) and 8 <= sum(c.isdigit() for c in v) <= 12 \
            and phone_context(text[:s])
        if not any(p.fullmatch(v) for p in PHONE_FULL) and not is_trunk(v) and not grouped:
            bad("no phone format")
        if v.startswith("+"):
            n = sum(c.isdigit() for c in v)
            if not 8 <= n <= 15:
                bad("E.164 digit count")
        if v.startswith("00"):
            n = sum(c.isdigit() for c in v) - 2
            if not 8 <= n <= 15:
                bad("00 digit count")
    elif t == "jwt":
        segs = v.split(".")
        if len(segs) != 3 or not v.startswith("eyJ") or not all(re.fullmatch(r"[A-Za-z0-9_-]+", x) for x in segs):
            bad("not header.payload.signature")
        else:
            hdr = json.loads(base64.urlsafe_b64decode(segs[0] + "=" * (-len(segs[0]) % 4)))
            if "alg" not in hdr:
                bad("header without alg")
    elif t == "aws_access_key":
        if not AKID_RE.fullmatch(v):
            bad("not a key id")
    elif t == "aws_secret_key":
        if not (len(v) == 40 and re.fullmatch(r"[A-Za-z0-9/+]+", v) and re.search("[A-Z]", v)
                and re.search("[a-z]", v) and re.search("[0-9]", v)):
            bad("not a 40-char secret")
    elif t == "bearer":
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v) or not re.search(r"(?i)bearer +$", text[:s]):
            bad("not a token after Bearer")
    elif t == "secret":
        if v.strip() != v or all(c in "*xX" for c in v) or v.startswith("/"):
            bad("blank, masked or path")
    elif t == "url_password":
        if not re.search(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:$", text[:s]) or text[e:e + 1] != "@":
            bad("not URL userinfo password")
    elif t == "private_key":
        m = re.match(r"-----BEGIN ((?:[A-Z]+ )*PRIVATE KEY)-----", v)
        if not m:
            bad("no BEGIN marker")
        elif not v.endswith(f"-----END {m.group(1)}-----") and not (e == len(text) and "-----END" not in v):
            bad("does not end at END marker / end of record")
    return errs


def isin(c, chars):
    return c != "" and c in chars


def boundary_errs(text, s, e, t):
    b = text[s - 1] if s > 0 else ""
    a = text[e] if e < len(text) else ""
    v = text[s:e]
    errs = []
    after_escape = t == "email" and re.search(r"%[0-9A-Fa-f]{2}$", text[:s]) is not None
    if (b.isalnum() and v[0].isalnum() and not after_escape) or (a.isalnum() and v[-1].isalnum()):
        errs.append(f"{t} {v!r}: inside a longer token")
    if t in ("card", "phone", "ssn", "iban", "ipv4"):
        if b == "." or a == "." or isin(b, DG) or isin(a, DG):
            errs.append(f"{t} {v!r}: adjacent digit/dot")
        if re.match(r"[ .-]\d", text[e:e + 2]) or (s >= 2 and re.match(r"\d[ .-]", text[s - 2:s])):
            errs.append(f"{t} {v!r}: continues as a digit group")
        if b == "+":
            errs.append(f"{t} {v!r}: preceded by +")
    if t == "iban" and re.match(r" [A-Z0-9]", text[e:e + 2]):
        errs.append(f"iban {v!r}: followed by a group-like token")
    if t == "email" and (isin(b, "._%+-") or isin(a, ".-_@")):
        errs.append(f"email {v!r}: boundary")
    if t == "ipv6" and (isin(b, ":.") or isin(a, ":.") or a.isalnum()):
        errs.append(f"ipv6 {v!r}: boundary")
    if t == "ipv6" and b == "[" and a != "]":
        errs.append(f"ipv6 {v!r}: unclosed bracket")
    if t in ("jwt", "bearer") and (isin(a, "._~+/=-") or isin(b, "_-.")):
        errs.append(f"{t} {v!r}: token continues")
    if t in ("aws_access_key", "aws_secret_key") and (isin(a, "/+=") or isin(b, "/+")):
        errs.append(f"{t} {v!r}: token continues")
    return errs


# --------------------------------------------------------------------------------------
# The scanner: an independent, over-eager reading of the README rules
# --------------------------------------------------------------------------------------

SENS_SUFFIX = ("password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "authorization")
SECRET_TYPES = ("secret", "jwt", "aws_access_key", "aws_secret_key")


def norm_key(k):
    return re.sub(r"[-_.]", "", k).lower()


def is_sensitive(k):
    return norm_key(k).endswith(SENS_SUFFIX)


def is_masked(v):
    return v != "" and all(c in "*xX" for c in v)


VERSION_KEYS = r"(?i:version|ver|vsn|v|release|build|firmware|fw|rev|revision)"


def quad_context(prefix):
    if re.search(r"(?<![A-Za-z0-9])" + VERSION_KEYS + r"(?:=|:|: | )$", prefix):
        return "version"
    if re.search(r"(?:==|>=|<=|~=|!=)$", prefix):
        return "version"
    if re.search(r"(?<![A-Za-z0-9])[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*[-_]$", prefix):
        return "version"
    if re.search(r"(?<![A-Za-z0-9_-])[A-Z][A-Za-z]*/$", prefix):
        return "version"
    if re.search(VERSION_KEYS + r"[\"']?[\s=:]*[\"']?$", prefix):
        return "ambiguous"
    if re.search(r"[A-Za-z0-9_-]/$", prefix):
        return "ambiguous"
    return "address"


def digit_chains(text):
    runs = [m.span() for m in re.finditer(r"\d+", text)]
    chains, cur = [], []
    for s, e in runs:
        if cur and s - cur[-1][1] == 1 and text[s - 1] in " .-":
            cur.append((s, e))
        else:
            if cur:
                chains.append(cur)
            cur = [(s, e)]
    if cur:
        chains.append(cur)
    return chains


def scan(text, spans):
    """Claims: (start, end, allowed types, mode) with mode 'exact' or 'within';
    forbidden: ranges no label may touch; ambiguous: messages (always an error)."""
    claims, forbidden, amb = [], [], []

    def exact(s, e, *types):
        claims.append((s, e, types, "exact"))

    def within(s, e, *types):
        claims.append((s, e, types, "within"))

    v6_spans = [(s, e) for s, e, t in spans if t == "ipv6"]

    # email -----------------------------------------------------------------------
    for m in re.finditer(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9])", text):
        s, e = m.span()
        dom = m.group().split("@", 1)[1]
        if text[:s].endswith("ssh://") and m.group().startswith("git@"):
            forbidden.append((s, e))
        elif re.fullmatch(r"[0-9]x\.(?:png|jpg|webp|svg)", dom):
            forbidden.append((s, e))
        else:
            exact(s, e, "email")

    # percent-encoded addresses: units are `%XX` escapes or single characters; the local
    # part is the run of allowed units before `%40` (leading dots dropped).
    for m in re.finditer(r"%40((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,})(?![A-Za-z0-9])", text):
        k = m.start()
        start = k
        while start > 0:
            if start >= 3 and re.fullmatch(r"%[0-9A-Fa-f]{2}", text[start - 3:start]):
                if text[start - 2:start].upper() in ("2B", "2D", "2E", "5F"):
                    start -= 3
                    continue
                break
            if re.fullmatch(r"[A-Za-z0-9._+-]", text[start - 1]):
                start -= 1
                continue
            break
        while start < k and text[start] == ".":
            start += 1
        if start < k and text[k - 1] != "." and not re.fullmatch(r"[0-9]x\.(?:png|jpg|webp|svg)", m.group(1)):
            exact(start, m.end(), "email")

    # ipv4 ------------------------------------------------------------------------
    for m in re.finditer(r"\d+(?:\.\d+)*", text):
        parts = m.group().split(".")
        if len(parts) != 4:
            continue
        s, e = m.span()
        if not all(int(p) <= 255 for p in parts):
            forbidden.append((s, e))
            continue
        inside6 = any(a <= s and e <= b for a, b in v6_spans)
        if inside6:
            continue
        b = text[s - 1] if s else ""
        a = text[e] if e < len(text) else ""
        if any(len(p) > 1 and p[0] == "0" for p in parts):
            amb.append(f"quad with leading zero {m.group()!r}")
            continue
        nxt = text[e + 1] if e + 1 < len(text) else ""
        if (a in ".-" and nxt.isalpha()) or (a == "+" and nxt.isalnum()):
            forbidden.append((s, e))  # a version: lib-1.2.3.4.so, 1.2.3.4-SNAPSHOT, 1.2.3.4+b7
            continue
        if b.isalnum() or b == "." or a.isalnum() or a == ".":
            amb.append(f"quad glued to a token {m.group()!r}")
            continue
        ctx = quad_context(text[:s])
        if ctx == "version":
            forbidden.append((s, e))
        elif ctx == "address":
            exact(s, e, "ipv4")
        else:
            amb.append(f"quad in unclear version context {text[max(0, s - 12):e]!r}")

    # ipv6: every parseable substring with a digit of a hex/colon run ------------------
    for m in re.finditer(r"[0-9A-Fa-f:.]+", text):
        run = m.group()
        if run.count(":") < 2:
            continue
        base = m.start()
        n = len(run)
        for i in range(n):
            if run[i] == ".":
                continue
            for j in range(i + 2, n + 1):
                sub = run[i:j]
                if sub.count(":") < 2 or sub[-1] == ".":
                    continue
                if not any(c.isdigit() for c in sub):
                    continue
                if v6_parse(sub):
                    within(base + i, base + j, "ipv6")

    # digit chains: cards, SSNs, phones --------------------------------------------
    def free_left(pos):
        return pos == 0 or not text[pos - 1].isalnum()

    def free_right(pos):
        return pos >= len(text) or not text[pos].isalnum()

    for c in digit_chains(text):
        k = len(c)
        for i in range(k):
            digits = ""
            for j in range(i, k):
                digits += text[c[j][0]:c[j][1]]
                s, e = c[i][0], c[j][1]
                seps = [text[c[x][1]] for x in range(i, j)]
                if 13 <= len(digits) <= 19 and is_card_digits(digits) and "." not in seps:
                    exact(s, e, "card")
                if not (free_left(s) and free_right(e)):
                    continue
                lens = [c[x][1] - c[x][0] for x in range(i, j + 1)]
                g0 = text[c[i][0]:c[i][1]]
                if lens == [3, 2, 4] and seps == ["-", "-"]:
                    if ssn_valid(digits[:3], digits[3:5], digits[5:]):
                        exact(s, e, "ssn")
                    else:
                        forbidden.append((s, e))
                nd = len(digits)
                phone_like = False
                if lens == [3, 3, 4] and g0[0] in "23456789" and text[c[i + 1][0]] in "23456789":
                    phone_like = True
                if lens == [1, 3, 3, 4] and g0 == "1":
                    phone_like = True
                after = text[e:e + 1]
                dotted = "." in seps
                if (j > i and g0.startswith("0") and not g0.startswith("00") and 2 <= len(g0) <= 5
                        and all(x >= 2 for x in lens[1:]) and 9 <= nd <= 12 and after != ":"
                        and (not dotted or set(seps) == {"."})
                        and not (lens == [3, 2, 4] and seps == ["-", "-"])):
                    phone_like = True
                if (j > i and len(set(seps)) == 1 and all(2 <= x <= 4 for x in lens) and 8 <= nd <= 12
                        and after != ":" and phone_context(text[:s])):
                    phone_like = True
                if (j > i and g0.startswith("00") and 10 <= nd <= 17
                        and (len(g0) <= 5 or phone_context(text[:s]))):
                    phone_like = True
                if s > 0 and text[s - 1] == "+" and nd >= 7:
                    phone_like = True
                    s -= 1
                if phone_like:
                    within(s, e, "phone")
    for m in re.finditer(r"\(\s*[2-9]\d{2}\s*\)[ .-]?[2-9]\d{2}[ .-]?\d{4}", text):
        within(m.start(), m.end(), "phone")
    # Trunk numbers with the area code in parentheses or before a slash.
    for m in re.finditer(r"\(0[1-9]\d{0,3}\) ?\d{2,}(?:[ -]\d{2,})*|(?<![\d./-])0[1-9]\d{0,3}/\d{2,}(?:[ -]\d{2,})*", text):
        if 9 <= sum(c.isdigit() for c in m.group()) <= 12 and not text[m.end():m.end() + 1].isalnum():
            within(m.start(), m.end(), "phone")
    for m in re.finditer(r"(?<![A-Za-z0-9_])ssn\"?\s*[=:]\s*\"?(\d{9})(?!\d)", text, re.I):
        a, g, s_ = m.group(1)[:3], m.group(1)[3:5], m.group(1)[5:]
        if ssn_valid(a, g, s_):
            exact(m.start(1), m.end(1), "ssn")
    for m in re.finditer(r"[A-Za-z0-9]ssn\"?\s*[=:]\s*\"?\d{9}(?!\d)", text, re.I):
        amb.append(f"nine digits under a key ending in ssn {m.group()!r}")

    # IBAN --------------------------------------------------------------------------
    for m in re.finditer(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}", text):
        s = m.start()
        cc = text[s:s + 2]
        # compact: the whole upper-case alnum run
        run = re.match(r"[A-Z0-9]+", text[s:]).group()
        if cc in IBAN_LEN:
            n = IBAN_LEN[cc]
            cand = run[:n]
            if len(cand) == n and iban_mod(cand) == 1:
                if len(run) == n and not (s + n < len(text) and text[s + n].isalnum()):
                    exact(s, s + n, "iban")
                else:
                    amb.append(f"IBAN-valid prefix of a longer token {run!r}")
            # grouped: groups of four separated by single spaces
            gm = re.match(r"[A-Z0-9]{4}(?: [A-Z0-9]{4})*(?: [A-Z0-9]{1,4})?", text[s:])
            if gm:
                g = gm.group()
                compact = g.replace(" ", "")
                if len(compact) >= n and " " in g[:n + n // 4]:
                    # the first n characters with their spaces
                    cnt, k = 0, 0
                    while cnt < n and k < len(g):
                        if g[k] != " ":
                            cnt += 1
                        k += 1
                    cand = g[:k]
                    if iban_mod(cand.replace(" ", "")) == 1:
                        exact(s, s + k, "iban")
        else:
            if 15 <= len(run) <= 34 and iban_mod(run) == 1:
                amb.append(f"mod-97 valid token from an unlisted country {run!r}")

    # JWT ---------------------------------------------------------------------------
    for m in re.finditer(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*", text):
        exact(m.start(), m.end(), "jwt")
    for m in re.finditer(r"eyJ", text):
        within(m.start(), m.end(), "jwt")

    # AWS ---------------------------------------------------------------------------
    for m in AKID_RE.finditer(text):
        exact(m.start(), m.end(), "aws_access_key")
    if re.search(r"(?i)aws", text) or AKID_RE.search(text):
        for m in re.finditer(r"[A-Za-z0-9/+]+", text):
            tok = m.group()
            if len(tok) == 40 and re.search("[A-Z]", tok) and re.search("[a-z]", tok) and re.search("[0-9]", tok):
                exact(m.start(), m.end(), "aws_secret_key")
    for m in re.finditer(r"(?i)(?<![A-Za-z0-9])(?:aws_?)?secret_?access_?key[\"']?\s*[=:]\s*[\"']?", text):
        vm = re.match(r"[A-Za-z0-9/+]*", text[m.end():])
        if len(vm.group()) == 40:
            exact(m.end(), m.end() + 40, "aws_secret_key")
        else:
            amb.append(f"secret access key value of odd length {text[m.start():m.end() + 45]!r}")

    # Bearer ------------------------------------------------------------------------
    for m in re.finditer(r"(?i)(?<![A-Za-z0-9])bearer( +)(?=\S)", text):
        tm = re.match(r"[A-Za-z0-9._~+/=-]+", text[m.end():])
        if not tm:
            amb.append(f"Bearer followed by {text[m.end():m.end() + 5]!r}")
            continue
        exact(m.end(), m.end() + len(tm.group()), "bearer", "jwt")

    # secret: key=value / key="quoted" -------------------------------------------------
    for m in re.finditer(r"(?<![A-Za-z0-9_.-])([A-Za-z0-9_.-]+)(\s*)=", text):
        key = m.group(1)
        if not is_sensitive(key):
            continue
        vs = m.end()
        nxt = text[vs:vs + 1]
        if m.group(2) or nxt in (" ", "\t"):
            amb.append(f"spaces around = after {key!r}")
            continue
        if nxt == "'":
            amb.append(f"single-quoted value after {key}=")
            continue
        if norm_key(key).endswith("authorization"):
            amb.append(f"{key}= form")
            continue
        if nxt == '"':
            ve = text.find('"', vs + 1)
            if ve < 0:
                amb.append("unterminated quote")
                continue
            vs += 1
        else:
            vm = re.match(r"[^&\s,;\"')]*", text[vs:])
            ve = vs + len(vm.group())
        value = text[vs:ve]
        if value == "" or is_masked(value):
            continue
        if norm_key(key).endswith("pwd") and value.startswith("/"):
            continue
        exact(vs, ve, *SECRET_TYPES)

    # secret: JSON "key": "value" --------------------------------------------------------
    for m in re.finditer(r"\"([A-Za-z0-9_.-]+)\"\s*:\s*", text):
        key = m.group(1)
        if not is_sensitive(key):
            continue
        vs = m.end()
        nxt = text[vs:vs + 1]
        if nxt in ("{", "["):
            amb.append(f"structured value under {key!r}")
            continue
        if nxt != '"':
            continue  # null, numbers, booleans
        ve = text.find('"', vs + 1)
        value = text[vs + 1:ve]
        vs += 1
        allowed = SECRET_TYPES
        if norm_key(key).endswith("authorization"):
            sm = re.match(r"(Basic|Token|Bearer|Digest) +", value, re.I)
            if sm:
                if sm.group(1).lower() in ("bearer", "digest"):
                    amb.append(f"{sm.group(1)} scheme inside JSON {key}")
                    continue
                vs += len(sm.group())
                value = value[len(sm.group()):]
        if value == "" or is_masked(value):
            continue
        if norm_key(key).endswith("pwd") and value.startswith("/"):
            continue
        exact(vs, ve, *allowed)

    # secret: header / YAML  Key: value ---------------------------------------------------
    # README: a lower-case word before ": " in prose is not a key; an unquoted key counts
    # when it starts the line, follows { , ; ( or |, or has a capital letter, - or _ in it.
    for m in re.finditer(r"(?<![A-Za-z0-9_.\"-])([A-Za-z0-9_.-]+):([ \t]*)", text):
        key = m.group(1)
        if not is_sensitive(key):
            continue
        vs = m.end()
        if not m.group(2):
            if vs < len(text) and text[vs] != "\n":
                amb.append(f"{key}: without a space")
            continue
        ks = m.start(1)
        before = text[ks - 1] if ks else "\n"
        j = ks - 1
        while j >= 0 and text[j] in " \t":
            j -= 1
        prev = text[j] if j >= 0 else "\n"
        if before == "\n" or before in "{,;(|" or re.search(r"[A-Z_-]", key):
            pass  # a key
        elif prev == "\n" or prev in "{,;(|":
            amb.append(f"{key}: after indentation or after a separator and a space (key or prose?)")
            continue
        else:
            continue  # prose: "invalid token: expired"
        if before in "{,;(|":
            amb.append(f"{key}: after {before!r} (value extent undefined)")
            continue
        vm = re.match(r"[^\s]*", text[vs:])
        value = vm.group()
        allowed = SECRET_TYPES
        if norm_key(key).endswith("authorization"):
            sm = re.match(r"(Basic|Token|Bearer|Digest)( +)", text[vs:], re.I)
            if sm:
                if sm.group(1).lower() == "digest":
                    amb.append("Digest scheme")
                    continue
                if sm.group(1).lower() == "bearer":
                    allowed = SECRET_TYPES + ("bearer",)
                vs += len(sm.group())
                value = re.match(r"[^\s]*", text[vs:]).group()
        ve = vs + len(value)
        if value == "":
            continue
        if value[0] in "\"'":
            amb.append(f"quoted header/YAML value under {key}")
            continue
        if ve < len(text) and text[ve] != "\n":
            amb.append(f"header/YAML value under {key} does not end the line: {text[vs:ve + 10]!r}")
            continue
        if is_masked(value) or (norm_key(key).endswith("pwd") and value.startswith("/")):
            continue
        exact(vs, ve, *allowed)

    # url_password --------------------------------------------------------------------
    for m in re.finditer(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*)://([^\s:/@\"'<>]*):([^\s/@\"'<>]*)@", text):
        if m.group(3):
            exact(m.start(3), m.end(3), "url_password")

    # PEM ---------------------------------------------------------------------------
    for m in re.finditer(r"-----BEGIN ([A-Z0-9 ]+)-----", text):
        label = m.group(1)
        endm = f"-----END {label}-----"
        k = text.find(endm, m.end())
        e = k + len(endm) if k >= 0 else len(text)
        if label.endswith("PRIVATE KEY"):
            exact(m.start(), e, "private_key")
        else:
            forbidden.append((m.start(), e))

    return claims, forbidden, amb


COVERED = {"email", "ipv4", "card", "iban", "ssn", "jwt", "aws_access_key", "aws_secret_key",
           "bearer", "secret", "url_password", "private_key"}


def problems(text, spans):
    errs = []
    if not text.isascii():
        errs.append("non-ASCII line")
    last = 0
    for s, e, t in spans:
        if t not in TYPES:
            errs.append(f"unknown type {t}")
        if not (0 <= s < e <= len(text)):
            errs.append(f"span out of bounds {s},{e}")
        if s < last:
            errs.append(f"spans unsorted or overlapping at {s}")
        last = e
    if errs:
        return errs
    for s, e, t in spans:
        errs += validate_span(text, s, e, t)
        errs += boundary_errs(text, s, e, t)
    claims, forbidden, amb = scan(text, spans)
    errs += [f"ambiguous: {a}" for a in amb]
    span_set = {(s, e): t for s, e, t in spans}
    explained = set()
    for s, e, types, mode in claims:
        if mode == "exact":
            t = span_set.get((s, e))
            if t in types:
                explained.add((s, e, t))
            else:
                errs.append(f"unlabeled or mislabeled {types[0]} {text[s:e]!r} (label {t})")
        else:
            if not any(a <= s and e <= b and t in types for a, b, t in spans):
                errs.append(f"{types[0]}-like {text[s:e]!r} outside a {types[0]} label")
    for s, e in forbidden:
        for a, b, t in spans:
            if a < e and s < b:
                errs.append(f"look-alike {text[s:e]!r} labeled {t}")
    for s, e, t in spans:
        if t in COVERED and (s, e, t) not in explained:
            errs.append(f"label {t} {text[s:e]!r} not found by the scanner")
    return errs


# --------------------------------------------------------------------------------------
# Templates. Each returns pieces; positives carry at least one label, negatives none.
# --------------------------------------------------------------------------------------

TEMPLATES = []


def tpl(kind, count, neg=False):
    def deco(fn):
        TEMPLATES.append((kind, neg, count, fn))
        return fn
    return deco


def referer(pos=False):
    f = R.randrange(4)
    if f == 0:
        return "-"
    if f == 1:
        return f"https://www.{dom_label()}.com/"
    if f == 2 and pos:
        return [f"https://{domain()}/{ch(RESOURCES)}", query(True, 1, 2)]
    return f"https://{domain()}/{ch(RESOURCES)}?{noise_param()}"


def lookalike_text():
    """A short free-text look-alike from the README's negative list."""
    f = R.randrange(30)
    return [
        lambda: f"order {luhn_invalid16()}",
        lambda: f"ref {luhn_valid_noprefix()}",
        lambda: f"request_id={uuid4()}",
        lambda: f"sha256={sha256_hex()}",
        lambda: f"md5={hexs(32)}",
        lambda: f"commit {git_sha()}",
        lambda: version_kv(),
        lambda: f"oid {oid()}",
        lambda: f"seq {five_part()}",
        lambda: f"value {bad_octets()}",
        lambda: f"took {duration()}",
        lambda: f"mac {mac()}",
        lambda: "std::vector<int>",
        lambda: f"symbol {ch(['dead::beef', 'cafe::babe', 'face::feed', 'bead::fade'])}",
        lambda: ch(["icon@2x.png", "logo@3x.png", "avatar@2x.png"]),
        lambda: "user@localhost",
        lambda: f"lodash@4.17.{ri(10, 21)}",
        lambda: "@Override",
        lambda: f"image@sha256:{sha256_hex()}",
        lambda: 'token_type="Bearer"',
        lambda: f"max_tokens={ch([256, 512, 2048])}",
        lambda: "password_changed=true",
        lambda: f"password={masked()}",
        lambda: f"ts={epoch()}",
        lambda: f"size={size_str()}",
        lambda: f"amount={price()}",
        lambda: f"date={date_only()}",
        lambda: f"pod={pod_name()}",
        lambda: f"blob={b64blob()}",
        lambda: f"ssn_check={bad_ssn()}",
    ][f]()


def lookalike_pairs(n):
    """logfmt look-alike pairs."""
    opts = [
        lambda: ("request_id", uuid4()), lambda: ("trace_id", hexs(32)), lambda: ("span_id", hexs(16)),
        lambda: ("duration", duration()), lambda: ("took_ms", ri(1, 9000)), lambda: ("max_tokens", ri(16, 4096)),
        lambda: ("token_type", '"Bearer"'), lambda: ("password_changed", ch(["true", "false"])),
        lambda: ("tokens", ri(1, 9)), lambda: ("version", version4()), lambda: ("build", git_sha(True)),
        lambda: ("commit", git_sha()), lambda: ("order_id", luhn_invalid16()), lambda: ("ref", luhn_valid_noprefix()),
        lambda: ("checksum", "sha256:" + sha256_hex()), lambda: ("etag", hexs(32)), lambda: ("mac", mac()),
        lambda: ("pod", pod_name()), lambda: ("bytes", ri(0, 10 ** 7)), lambda: ("status", status()),
        lambda: ("ts_unix", epoch()), lambda: ("price", f"{ri(1, 999)}.{ri(0, 99):02d}"),
        lambda: ("oid", oid()), lambda: ("password", masked()), lambda: ("PWD", "/home/" + first()),
        lambda: ("elapsed", f"00:{ri(0, 59):02d}:{ri(0, 59):02d}.{ri(0, 999):03d}"),
        lambda: ("date", date_only()), lambda: ("nonce", b64blob(16)), lambda: ("v", version4()),
        lambda: ("ts_ms", epoch_ms()),
    ]
    return [ch(opts)() for _ in range(n)]


# ---- nginx --------------------------------------------------------------------------

@tpl("nginx", 150)
def nginx_access():
    client = ipv4() if chance(0.75) else ipv6()
    user = "-" if chance(0.85) else ch([first(), email()])
    tail = []
    if chance(0.3):
        tail += [' "', xff(), '"']
    if chance(0.4):
        tail.append(f' rt={secs()} uct="{secs()}" urt="{secs()}"')
    if chance(0.2):
        tail.append(f" request_id={hexs(32)}")
    qs = query(True) if chance(0.55) else (query(False) if chance(0.5) else "")
    return [client, " - ", user, " [", clf_ts(), '] "', method(), " ", api_path(), qs, " HTTP/",
            ch(["1.1", "1.1", "2.0", "1.0"]), '" ', str(status()), " ", str(ri(0, 99999)), ' "',
            referer(True), '" "', user_agent(), '"', tail]


@tpl("nginx", 50)
def nginx_error():
    return [nginx_err_ts(), f" [{ch(['error', 'warn', 'crit'])}] {ri(1, 999)}#{ri(1, 999)}: *{ri(1, 99999)} ",
            ch(["connect() failed (111: Connection refused) while connecting to upstream",
                "upstream timed out (110: Connection timed out) while reading response header from upstream",
                "no live upstreams while connecting to upstream",
                "SSL_do_handshake() failed while SSL handshaking to upstream"]),
            ", client: ", ipv4() if chance(0.8) else ipv6(), f", server: {domain()}, request: \"",
            method(), " ", api_path(), query(chance(0.4), 1, 2) if chance(0.5) else "", ' HTTP/1.1", upstream: "http://',
            ip_port(0.1), api_path(), f'", host: "{domain()}"'] + ([', referrer: "', referer(), '"'] if chance(0.3) else [])


@tpl("nginx", 70, neg=True)
def nginx_neg_access():
    return ["unix: - - [", clf_ts(), '] "', method(), " ", api_path(), query(False) if chance(0.6) else "",
            " HTTP/1.1\" ", str(status()), " ", str(ri(0, 9999)), ' "-" "', user_agent(), '"',
            f" rt={secs()}" if chance(0.5) else ""]


@tpl("nginx", 50, neg=True)
def nginx_neg_error():
    return [nginx_err_ts(), " ", ch([
        f"[notice] 1#1: using the \"epoll\" event method",
        f"[notice] 1#1: nginx/1.{ri(20, 27)}.{ri(0, 4)}",
        f"[notice] 1#1: built by gcc 12.2.0 (Debian 12.2.0-14)",
        f"[notice] 1#1: OS: Linux 6.1.0-{ri(10, 28)}-amd64",
        f"[notice] 1#1: getrlimit(RLIMIT_NOFILE): 1048576:1048576",
        f"[notice] 1#1: start worker process {ri(20, 99)}",
        f"[warn] {ri(10, 99)}#{ri(10, 99)}: *{ri(1, 9999)} an upstream response is buffered to a temporary file "
        f"/var/cache/nginx/proxy_temp/{ri(1, 9)}/{ri(10, 99)}/{hexs(10)} while reading upstream",
        f"[emerg] 1#1: unknown directive \"proxy_pas\" in /etc/nginx/conf.d/default.conf:{ri(5, 90)}",
        f"[notice] 1#1: signal {ri(1, 17)} (SIGHUP) received from {ri(100, 9999)}, reconfiguring",
        f"[info] {ri(10, 99)}#{ri(10, 99)}: *{ri(1, 9999)} client closed keepalive connection",
    ])]


# ---- apache -------------------------------------------------------------------------

@tpl("apache", 110)
def apache_access():
    client = ipv4() if chance(0.8) else ipv6()
    user = ch(["-", "-", "-", first(), "frank"])
    ua = user_agent()
    combined = chance(0.7)
    parts = [client, " - ", user, " [", clf_ts(), '] "', method(), " ", api_path(),
             query(True) if chance(0.45) else "", " HTTP/1.1\" ", str(status()), " ", str(ri(1, 99999))]
    if combined:
        parts += [' "', referer(True), '" "', ua, '"']
    if chance(0.15):
        parts += [f" {ri(100, 999999)}"]
    return parts


@tpl("apache", 60)
def apache_error():
    msg = ch([
        lambda: [f"AH01630: client denied by server configuration: /var/www/html/{ch(RESOURCES)}"],
        lambda: [f"AH00126: Invalid URI in request {method()} /..%2f..%2fetc/passwd HTTP/1.1"],
        lambda: ["AH01071: Got error 'PHP message: login failed for ", email(), "'"],
        lambda: ["AH01071: Got error 'PHP message: PHP Warning:  Undefined index: ", ch(["user", "id"]),
                 f" in /var/www/html/index.php on line {ri(2, 400)}'"],
        lambda: ["AH00124: Request exceeded the limit of 10 internal redirects due to probable configuration error."],
        lambda: [f"AH02032: Hostname {domain()} provided via SNI and hostname {domain()} provided via HTTP have no compatible SSL setup"],
        lambda: ["AH01797: client denied by server configuration: /srv/app/.env, referer: https://",
                 domain(), "/"],
    ])()
    return ["[", apache_err_ts(), f"] [{ch(['core', 'authz_core', 'proxy_fcgi', 'ssl', 'access_compat'])}:"
            f"{ch(['error', 'warn', 'notice'])}] [pid {ri(100, 99999)}:tid {ri(10 ** 11, 10 ** 12)}] [client ",
            ipv4(), f":{port()}] ", msg]


@tpl("apache", 50, neg=True)
def apache_neg_access():
    host = ch([f"{dom_label()}.{ch(['example.net', 'example.org', 'isp.example.com'])}", "localhost",
               f"proxy-{ri(1, 9)}.corp.example.com"])
    return [host, " - - [", clf_ts(), '] "', method(), " ", api_path(), query(False) if chance(0.5) else "",
            ' HTTP/1.1" ', str(status()), " ", str(ri(1, 99999)), ' "-" "', user_agent(), '"']


@tpl("apache", 40, neg=True)
def apache_neg_error():
    return ["[", apache_err_ts(), "] ", ch([
        f"[mpm_event:notice] [pid {ri(100, 9999)}:tid {ri(10 ** 11, 10 ** 12)}] AH00489: Apache/2.4.{ri(50, 62)} (Unix) "
        f"OpenSSL/3.0.{ri(2, 15)} configured -- resuming normal operations",
        f"[core:notice] [pid {ri(100, 9999)}:tid {ri(10 ** 11, 10 ** 12)}] AH00094: Command line: '/usr/sbin/apache2'",
        f"[mpm_event:notice] [pid {ri(100, 9999)}:tid {ri(10 ** 11, 10 ** 12)}] AH00491: caught SIGTERM, shutting down",
        f"[ssl:warn] [pid {ri(100, 9999)}:tid {ri(10 ** 11, 10 ** 12)}] AH01909: {dom_label()}.example.com:443:0 server "
        f"certificate does NOT include an ID which matches the server name",
        f"[php:error] [pid {ri(100, 9999)}:tid {ri(10 ** 11, 10 ** 12)}] PHP Fatal error:  Allowed memory size of "
        f"{ri(100, 999) * 1048576} bytes exhausted (tried to allocate {ri(1000, 99999)} bytes)",
    ])]


# ---- JSON application logs ------------------------------------------------------------

def jbase(lvl=None, msg="request completed"):
    return [("ts", iso_ts_z()) if chance(0.5) else ("@timestamp", iso_ts_z()), ("level", lvl or level()),
            ("logger", f"{ch(['com.example', 'app', 'svc'])}.{service()}"), ("msg", msg)]


@tpl("json", 70)
def json_user_event():
    user = O(("id", ri(1, 10 ** 6)), ("email", email()),
             ("phone", phone()) if chance(0.6) else None,
             ("name", full_name()) if chance(0.5) else None,
             ("address", O(("city", word().capitalize()), ("zip", f"{ri(10000, 99999)}"))) if chance(0.2) else None)
    pairs = jbase(msg=ch(["user signed in", "profile updated", "user created", "password reset requested",
                          "login failed"]))
    pairs += [("user", user), ("client_ip", ip_any(0.3)), ("request_id", uuid4()),
              ("duration_ms", ri(1, 2000))]
    if chance(0.35):
        pairs.append(("session", O(("token", secret_value() if chance(0.7) else jwt()), ("token_type", "Bearer"),
                                   ("expires_at", int(epoch())))))
    if chance(0.4):
        pairs.append(("user_agent", user_agent()))
    if chance(0.3):
        pairs.append(("password_changed", chance(0.5)))
    if chance(0.3):
        k, v = ch(lookalike_pairs(3))
        if k not in dict(pairs) and k not in ("v", "version", "token_type"):
            pairs.append((k, v if isinstance(v, int) else str(v)))
    return J(O(*pairs))


@tpl("json", 100)
def json_signup():
    payload = O(("email", email()), ("password", secret_value(spaces=True)) if chance(0.8) else ("password", None),
                ("ssn", ssn() if chance(0.7) else ssn_bare()) if chance(0.85) else None,
                ("card", O(("number", card()), ("exp", f"{ri(1, 12):02d}/{ri(25, 31)}"), ("brand", ch(["visa", "mc", "amex"]))))
                if chance(0.6) else None,
                ("phone", phone()) if chance(0.5) else None,
                ("iban", iban()) if chance(0.5) else None,
                ("marketing_opt_in", chance(0.5)))
    pairs = jbase(msg=ch(["signup received", "validating payload", "request body", "kyc check"]))
    pairs += [("event", ch(["signup", "kyc", "onboarding"])), ("payload", payload), ("trace_id", hexs(32))]
    return J(O(*pairs))


@tpl("json", 80)
def json_payment():
    pairs = jbase(msg=ch(["payment authorized", "payout scheduled", "refund issued", "sepa mandate created",
                          "charge declined"]))
    pay = O(("amount", ri(100, 999999) / 100), ("currency", ch(["EUR", "USD", "GBP", "CHF"])),
            ("iban", iban()) if chance(0.7) else None,
            ("card", card()) if chance(0.5) else None,
            ("card_last4", f"{ri(0, 9999):04d}"), ("order_id", luhn_invalid16()),
            ("merchant_ref", luhn_valid_noprefix()) if chance(0.4) else None,
            ("customer", O(("email", email()), ("phone", phone()) if chance(0.5) else None)))
    pairs += [("payment", pay), ("idempotency_key", uuid4())]
    return J(O(*pairs))


@tpl("json", 60)
def json_tokens():
    pairs = jbase(msg=ch(["token issued", "oauth callback", "refreshing credentials", "session created"]))
    body = O(("access_token", jwt()), ("refresh_token", secret_value()) if chance(0.7) else None,
             ("id_token", jwt()) if chance(0.5) else None, ("token_type", "Bearer"),
             ("expires_in", ch([300, 3600, 86400])), ("scope", "openid email"))
    pairs += [("response", body), ("client_id", rs(LO + DG, 20))]
    if chance(0.4):
        pairs.append(("client_secret", secret_value()))
    if chance(0.3):
        pairs.append(("max_tokens", ri(100, 4000)))
    return J(O(*pairs))


@tpl("json", 50)
def json_headers():
    hdrs = O(("Host", domain()), ("User-Agent", user_agent()),
             ("X-Api-Key", secret_value()) if chance(0.6) else None,
             ("X-Forwarded-For", S(xff())), ("Authorization", S("Basic ", secret_value())) if chance(0.3) else None,
             ("X-Request-Id", uuid4()), ("Cookie", S("sessionid=", hexs(32), "; csrftoken=", secret_value(url_safe=True)))
             if chance(0.4) else None)
    pairs = jbase(msg="incoming request")
    pairs += [("method", method()), ("path", api_path()), ("headers", hdrs), ("status", status()),
              ("latency", duration())]
    return J(O(*pairs))


@tpl("json", 70)
def json_error_msg():
    m = ch([
        lambda: S("duplicate key value violates unique constraint on email ", email()),
        lambda: S("upstream ", ip_port(0.3), " refused connection"),
        lambda: S("could not deliver sms to ", phone()),
        lambda: S("card ", card(), " declined: insufficient funds"),
        lambda: S("iban ", iban(False), " failed validation at partner bank"),
        lambda: S("dial tcp ", ip_port(0.3), ": i/o timeout after ", duration()),
        lambda: S("retrying with token=", secret_value(url_safe=True)),
        lambda: S("connect to ", ch(["postgres", "mysql", "redis"]), "://app:", url_password(), "@", hostname(),
                  f":{port()}/app failed"),
    ])()
    pairs = jbase(lvl="error", msg=m)
    pairs += [("error", ch(["ECONNREFUSED", "timeout", "validation_failed", "declined"])), ("attempt", ri(1, 5)),
              ("request_id", uuid4())]
    if chance(0.5):
        pairs.append(("version", version3()))
    return J(O(*pairs))


@tpl("json", 50)
def json_config_dump():
    cfg = O(("database_url", S(ch(["postgres", "postgresql", "mysql"]), "://", ch(["app", "svc", "root", "admin"]), ":",
                               url_password(), "@", hostname(), f":{ri(3306, 5432)}/{word()}")),
            ("redis_url", S("redis://:", url_password(), "@", hostname(), ":6379/0")) if chance(0.5) else None,
            ("smtp_password", secret_value()) if chance(0.5) else None,
            ("api_token", secret_value()) if chance(0.5) else None,
            ("jwt_secret", secret_value()) if chance(0.4) else None,
            ("admin_email", email()) if chance(0.5) else None,
            ("bind", S(ip_port(0.2))) if chance(0.5) else None,
            ("pwd", "/srv/" + word()) if chance(0.3) else None,
            ("log_level", "debug"))
    return J(O(*(jbase(lvl="debug", msg="effective configuration") + [("config", cfg)])))


@tpl("json", 100)
def json_aws():
    f = R.randrange(3)
    if f == 0:
        creds = O(("AccessKeyId", aws_key_id()), ("SecretAccessKey", aws_secret()),
                  ("SessionToken", (rs(ALNUM, 4) + rs(B64, ri(120, 200)) + "==", "secret")), ("Expiration", iso_ts_z()))
        pairs = jbase(msg="assumed role") + [("Credentials", creds),
                                            ("AssumedRoleUser", O(("AssumedRoleId", "AROA" + rs(UP + DG, 17) + ":" + first())))]
    elif f == 1:
        pairs = jbase(msg="aws client configured") + [("aws_access_key_id", aws_key_id()),
                                                      ("aws_secret_access_key", aws_secret()),
                                                      ("region", ch(["us-east-1", "eu-west-1", "ap-southeast-2"]))]
    else:
        pairs = jbase(lvl="warn", msg=S("AccessDenied for ", aws_key_id(), " on bucket ", word(), "-", word())) + \
            [("aws_request_id", rs(UP + DG, 16)), ("s3_etag", hexs(32)), ("sdk", f"aws-sdk-go/1.{ri(40, 55)}.{ri(1, 300)}")]
    return J(O(*pairs))


@tpl("json", 75)
def json_pem_escaped():
    key = private_key(nl="\\n")
    pairs = jbase(lvl="debug", msg=ch(["tls material loaded", "secret synced", "rendering template"]))
    obj = [("secret_name", f"{word()}-tls"), ("namespace", ch(["default", "prod", "payments"]))]
    if chance(0.3):
        obj.append(("tls.crt", Raw('"' + pem_text("CERTIFICATE", "\\n") + '\\n"')))
    obj.append((ch(["tls.key", "private_key", "key", "ssh_key", "pem"]), Raw(['"', key, '\\n"'] if chance(0.7) else ['"', key, '"'])))
    if chance(0.3):
        obj.append(("fingerprint", "SHA256:" + b64blob(32).rstrip("=")))
    return J(O(*(pairs + [("data", O(*obj))])))


@tpl("json", 170, neg=True)
def json_neg():
    pairs = jbase(msg=ch(["request completed", "cache miss", "job finished", "config reloaded", "user logged out",
                          "rate limit exceeded", "webhook delivered", "password reset email queued",
                          "token refresh skipped", "secret rotation scheduled"]))
    if chance(0.15):
        pairs[3] = ("msg", prose_colon())
    extra = ch([
        lambda: [("password", None), ("password_changed", True)],
        lambda: [("password", masked()), ("token", "")],
        lambda: [("token", None), ("token_type", "Bearer"), ("expires_in", 3600)],
        lambda: [("api_key", masked()), ("max_tokens", ri(64, 4096)), ("tokens", ri(1, 20))],
        lambda: [("pwd", "/home/" + first()), ("shell", "/bin/bash")],
        lambda: [("secret", False), ("secret_name", f"{word()}-credentials")],
        lambda: [("password", ri(1000, 999999)), ("password_length", ri(8, 64))],
        lambda: [("card_last4", f"{ri(0, 9999):04d}"), ("order_id", luhn_invalid16()), ("ref", luhn_valid_noprefix())],
        lambda: [("ssn", bad_ssn()), ("ssn_verified", False)],
        lambda: [("iban", bad_iban()), ("iban_valid", False)],
        lambda: [("version", version3()), ("build", git_sha()), ("node", pod_name())],
        lambda: [("image", f"registry.example.com/{word()}@sha256:{sha256_hex()}")],
        lambda: [("duration", duration()), ("bytes", ri(0, 10 ** 8)), ("status", status())],
        lambda: [("mac", mac()), ("oid", oid()), ("seq", five_part())],
        lambda: [("amount", price()), ("date", date_only()), ("ts_unix", int(epoch()))],
        lambda: [("asset", ch(["icon@2x.png", "logo@3x.png"])), ("dependency", f"lodash@4.17.{ri(15, 21)}")],
        lambda: [("checksum", hexs(64)), ("md5", hexs(32)), ("nonce", b64blob())],
        lambda: [("user", "admin@localhost"), ("annotation", "@Override")],
        lambda: [("symbol", "std::vector<std::string>"), ("addr", ch(["dead::beef", "cafe::babe"]))],
        lambda: [("value", bad_octets()), ("mask_bits", ri(8, 30))],
        lambda: [("authorization", None), ("passphrase", "")],
        lambda: [("user_id", ri(1, 10 ** 6)), ("account", str(ri(10 ** 9, 4 * 10 ** 9)))],
    ])()
    pairs += extra + [("request_id", uuid4())]
    if chance(0.25):
        pairs.append(("user_agent", user_agent()))
    return J(O(*pairs))


@tpl("json", 30, neg=True)
def json_neg_pem_public():
    label = ch(["CERTIFICATE", "CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY"])
    return J(O(*(jbase(lvl="debug", msg="loaded trust bundle") +
                 [("ca", Raw('"' + pem_text(label, "\\n") + '\\n"')), ("serial", hexs(32)),
                  ("not_after", iso_ts_z())])))


# ---- logfmt -----------------------------------------------------------------------------

def lf_base(msg=None):
    return [("ts", iso_ts_z()) if chance(0.5) else ("time", iso_ts_z()), ("level", level()),
            ("msg", msg or ch(["request completed", "login succeeded", "payment created", "upstream error",
                               "session started", "sending notification"]))]


@tpl("logfmt", 210)
def logfmt_pos():
    pool = [
        lambda: ("user", S(email())), lambda: ("email", S(email())), lambda: ("ip", S(ip_any(0.3))),
        lambda: ("remote_addr", S(ip_port(0.3))), lambda: ("phone", S(phone())), lambda: ("card", S(card())),
        lambda: ("iban", S(iban())), lambda: ("ssn", S(ssn())), lambda: ("ssn", S(ssn_bare())),
        lambda: ("password", secret_value()), lambda: ("db_password", secret_value()),
        lambda: ("api_key", secret_value()), lambda: ("apiKey", secret_value()),
        lambda: ("access_token", S(jwt())), lambda: ("id_token", S(jwt())), lambda: ("refresh_token", secret_value()),
        lambda: ("client_secret", secret_value()), lambda: ("auth", S("Bearer ", bearer_token())),
        lambda: ("x_auth_token", secret_value()), lambda: ("spring.datasource.password", secret_value()),
        lambda: ("dsn", S("postgres://", ch(["app", "svc"]), ":", url_password(), "@", hostname(), "/", word())),
        lambda: ("passphrase", secret_value(spaces=True)), lambda: ("csrf-token", secret_value()),
        lambda: ("peer", S(ipv6())), lambda: ("src", S(ipv4())), lambda: ("link", S(*ipv6_zoned())),
    ]
    n = ri(1, 4)
    picked = []
    used = set()
    while len(picked) < n:
        k, v = ch(pool)()
        if k in used:
            continue
        used.add(k)
        picked.append((k, v))
    noise = lookalike_pairs(ri(1, 3))
    pairs = lf_base() + [(f"svc", service())]
    rest = picked + [p for p in noise if p[0] not in used]
    R.shuffle(rest)
    return lf(*(pairs + rest))


@tpl("logfmt", 140, neg=True)
def logfmt_neg():
    pairs = lf_base(ch(["request completed", "cache warmed", "job done", "reload ok", "token refresh not needed",
                        "password policy loaded", "secret store unreachable, using cache"]))
    seen = set()
    rest = []
    for k, v in lookalike_pairs(ri(2, 6)):
        if k not in seen:
            seen.add(k)
            rest.append((k, v))
    if chance(0.3):
        rest.append(ch([("PWD", "/srv/" + word()), ("password", '""'), ("api_token", '""')]))
    if chance(0.3):
        rest.append(("ua", user_agent()))
    # an empty value at the end of the line
    return lf(*(pairs + [("svc", service())] + rest)) + ([" password="] if chance(0.1) else [])


# ---- syslog -----------------------------------------------------------------------------

def host():
    return ch(["web-01", "web-02", "db-1", "bastion", "mail", "mx1", "ip-internal-7", "node3", "edge-fra-2"])


def pri():
    return f"<{ri(0, 191)}>"


@tpl("syslog", 100)
def syslog_sshd():
    who = ch([first(), "root", "deploy", "ubuntu", "git"])
    src = ipv4() if chance(0.75) else ipv6()
    p = port()
    msg = ch([
        lambda: [f"Accepted password for {who} from ", src, f" port {p} ssh2"],
        lambda: [f"Failed password for {who} from ", src, f" port {p} ssh2"],
        lambda: [f"Failed password for invalid user {word()} from ", src, f" port {p} ssh2"],
        lambda: [f"Accepted publickey for {who} from ", src, f" port {p} ssh2: RSA SHA256:{b64blob(32).rstrip('=')}"],
        lambda: [f"Invalid user {word()} from ", src, f" port {p}"],
        lambda: ["Connection closed by authenticating user ", who, " ", src, f" port {p} [preauth]"],
        lambda: [f"pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=", src,
                 f"  user={who}"],
        lambda: ["Received disconnect from ", src, f" port {p}:11: disconnected by user"],
        lambda: ["Server listening on ", ch([("0.0.0.0", "ipv4"), ("::1", "ipv6"), ipv4()]), " port 22."],
    ])()
    head = [syslog_ts(), f" {host()} sshd[{ri(100, 99999)}]: "]
    if chance(0.3):
        head = [pri()] + head
    return head + msg


@tpl("syslog", 100)
def syslog_postfix():
    qid = rs("0123456789ABCDEF", ri(10, 12))
    msg = ch([
        lambda: [f"postfix/smtpd[{ri(100, 99999)}]: connect from {ch(['unknown', domain()])}[", ip_any(0.2), "]"],
        lambda: [f"postfix/smtpd[{ri(100, 99999)}]: {qid}: client={ch(['unknown', domain()])}[", ip_any(0.2),
                 "]" + ch(["", ", sasl_method=PLAIN, sasl_username="]) ] ,
        lambda: [f"postfix/qmgr[{ri(100, 99999)}]: {qid}: from=<", email(), f">, size={ri(300, 99999)}, nrcpt={ri(1, 5)} (queue active)"],
        lambda: [f"postfix/smtp[{ri(100, 99999)}]: {qid}: to=<", email(), f">, relay={domain()}[", ipv4(),
                 f"]:25, delay={ri(0, 9)}.{ri(0, 9)}, delays=0.{ri(0, 9)}/0/0.{ri(0, 9)}/0.{ri(0, 9)}, dsn=2.0.0, "
                 f"status=sent (250 2.0.0 OK {epoch()} {rs(LO + DG, 12)} - gsmtp)"],
        lambda: [f"postfix/smtp[{ri(100, 99999)}]: {qid}: to=<", email(), ">, orig_to=<", email(),
                 f">, relay=none, delay={ri(1, 900)}, delays={ri(1, 9)}/0/{ri(1, 9)}/0, dsn=4.4.1, status=deferred "
                 f"(connect to {domain()}[", ipv4(), "]:25: Connection timed out)"],
        lambda: [f"postfix/cleanup[{ri(100, 99999)}]: {qid}: message-id=<{hexs(16)}@", ch([domain(), "localhost"]), ">"],
        lambda: [f"postfix/smtpd[{ri(100, 99999)}]: NOQUEUE: reject: RCPT from unknown[", ipv4(),
                 "]: 554 5.7.1 <", email(), ">: Relay access denied; from=<", email(), "> to=<", email(),
                 f"> proto=ESMTP helo=<{dom_label()}>"],
    ])()
    return [syslog_ts(), f" {ch(['mail', 'mx1', 'smtp-out'])} "] + msg


@tpl("syslog", 60)
def syslog_kernel():
    msg = ch([
        lambda: [f"[UFW BLOCK] IN=eth0 OUT= SRC=", ipv4(), " DST=", ipv4(),
                 f" LEN={ri(40, 1500)} TOS=0x00 PREC=0x00 TTL={ri(30, 128)} ID={ri(1, 65535)} DF PROTO=TCP "
                 f"SPT={port()} DPT={ch([22, 80, 443, 3306, 5432])} WINDOW={ri(1000, 65535)} RES=0x00 SYN URGP=0"],
        lambda: ["IPv4: martian source ", ipv4(), " from ", ipv4(), ", on dev eth0"],
        lambda: [f"[{ri(1, 99999)}.{ri(0, 999999):06d}] nf_conntrack: dropping packet from ", ipv4()],
        lambda: [f"[UFW BLOCK] IN=eth0 OUT= SRC=", ("fe80:0000:0000:0000:" + ":".join(hexs(4) for _ in range(4)), "ipv6"),
                 " DST=", ("ff02:0000:0000:0000:0000:0000:0000:0001", "ipv6"),
                 f" LEN={ri(40, 200)} TC=0 HOPLIMIT=1 FLOWLBL=0 PROTO=UDP SPT=546 DPT=547 LEN={ri(20, 90)}"],
        lambda: [f"dhcpd[{ri(100, 9999)}]: DHCPACK on ", ipv4(), f" to {mac()} ({word()}) via eth0"],
        lambda: [f"dhcp6c[{ri(100, 9999)}]: received REPLY from ", ipv6_zoned(), f", xid {hexs(6)}"],
        lambda: [f"IPv6: {ch(['eth0', 'ens3'])}: IPv6 duplicate address ", ipv6(), " used by ", mac(), " detected!"],
    ])()
    return [syslog_ts(), f" {host()} ", "kernel: " if not msg[0].startswith("dhcp") else ""] + msg


@tpl("syslog", 90)
def syslog_5424():
    app = ch(["app", "billing", "auth", "api-gw", "cron-runner"])
    sd = ch([lambda: ["[origin ip=\"", ipv4(), "\"]"],
             lambda: [f"[exampleSDID@32473 iut=\"{ri(1, 9)}\" eventSource=\"Application\" eventID=\"{ri(1000, 9999)}\"]"],
             lambda: ["-"],
             lambda: ["[meta sequenceId=\"", str(ri(1, 99999)), "\"][origin ip=\"", ipv6(), "\"]"]])()
    msg = ch([
        lambda: ["login failed for ", email(), " from ", ip_any(0.3)],
        lambda: ["user ", email(), " changed phone to ", phone()],
        lambda: ["payment ", luhn_invalid16(), " captured with card ", card()],
        lambda: ["refund to ", iban(), ", ref " + order_id()],
        lambda: [lookalike_text(), " request from ", ipv4()],
        lambda: ["api call with api_key=", secret_value(url_safe=True), " rejected"],
    ])()
    return [pri(), "1 ", iso_ts_z(), f" {host()} {app} {ri(100, 99999)} {ch(['ID47', '-', 'AUDIT', 'REQ'])} "] + sd + [" "] + msg


@tpl("syslog", 130, neg=True)
def syslog_neg():
    u = first()
    msg = ch([
        lambda: f"CRON[{ri(100, 99999)}]: ({u}) CMD (/usr/local/bin/backup.sh >/dev/null 2>&1)",
        lambda: f"sudo: {u} : TTY=pts/{ri(0, 9)} ; PWD=/home/{u} ; USER=root ; COMMAND=/usr/bin/systemctl restart nginx",
        lambda: f"sshd[{ri(100, 99999)}]: pam_unix(sshd:session): session closed for user {u}",
        lambda: f"sshd[{ri(100, 99999)}]: pam_unix(sshd:session): session opened for user {u}(uid={ri(1000, 1999)}) by (uid=0)",
        lambda: f"systemd[1]: Started {word()}.service - {word().capitalize()} daemon.",
        lambda: f"systemd[1]: {word()}.service: Consumed {ri(1, 99)}.{ri(100, 999)}s CPU time.",
        lambda: f"kernel: [{ri(1, 99999)}.{ri(0, 999999):06d}] EXT4-fs (sda{ri(1, 4)}): mounted filesystem with ordered data mode.",
        lambda: f"kernel: [{ri(1, 99999)}.{ri(0, 999999):06d}] Out of memory: Killed process {ri(100, 99999)} (java) "
                f"total-vm:{ri(10 ** 6, 9 * 10 ** 6)}kB, anon-rss:{ri(10 ** 5, 9 * 10 ** 5)}kB",
        lambda: f"kernel: Linux version 6.1.0-{ri(10, 28)}-amd64 (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC",
        lambda: f"kernel: [{ri(1, 999)}.{ri(0, 999999):06d}] e1000e 0000:00:1f.6 eth0: NIC Link is Up 1000 Mbps Full Duplex",
        lambda: f"kernel: [{ri(1, 999)}.{ri(0, 999999):06d}] usb 1-{ri(1, 4)}: new high-speed USB device number {ri(2, 9)} using xhci_hcd",
        lambda: f"dhclient[{ri(100, 9999)}]: DHCPREQUEST for lease on eth0, hwaddr {mac()}",
        lambda: f"ntpd[{ri(100, 9999)}]: ntpd 4.2.8p15@1.3728-o {syslog_ts()} (1): Starting",
        lambda: f"postfix/qmgr[{ri(100, 9999)}]: {rs('0123456789ABCDEF', 10)}: removed",
        lambda: f"postfix/pickup[{ri(100, 9999)}]: {rs('0123456789ABCDEF', 10)}: uid={ri(0, 1999)} from=<{u}@localhost>",
        lambda: f"app[{ri(100, 9999)}]: {lookalike_text()}, {lookalike_text()}",
        lambda: f"sshd[{ri(100, 99999)}]: {ch(['password', 'keyboard-interactive'])} authentication disabled by config",
        lambda: f"systemd-logind[{ri(100, 999)}]: New session {ri(1, 999)} of user {u}.",
    ])()
    if chance(0.3):
        return [pri(), "1 ", iso_ts_z(), f" {host()} {ch(['app', 'cron', 'auth'])} {ri(100, 9999)} - - ", msg]
    return [syslog_ts(), f" {host()} ", msg]


# ---- SQL ----------------------------------------------------------------------------------

def sql_prefix():
    f = R.randrange(3)
    if f == 0:
        return f"{pg_ts()} [{ri(100, 99999)}] app@{word()} LOG:  statement: "
    if f == 1:
        return f"{iso_ts_z()}\t{ri(1, 999):>5} Query\t"
    return f"{pg_ts()} [{ri(100, 99999)}] LOG:  duration: {ri(0, 999)}.{ri(100, 999)} ms  statement: "


def q(v):
    return ["'", v, "'"]


@tpl("sql", 210)
def sql_pos():
    f = R.randrange(7)
    if f == 0:
        cols = ["name", "email"]
        vals = [q(full_name()), q(email())]
        for col, gen in R.sample([("phone", phone), ("card_number", card), ("iban", iban), ("ssn", ssn),
                                  ("signup_ip", lambda: ip_any(0.3))], ri(1, 3)):
            cols.append(col)
            vals.append(q(gen()))
        cols.append("created_at")
        vals.append(q(iso_date() if chance(0.5) else iso_ts_z()))
        body = [f"INSERT INTO {ch(['customers', 'users', 'accounts'])} (", ", ".join(cols), ") VALUES (",
                join(vals, ", "), ");"]
    elif f == 1:
        body = [f"UPDATE users SET email = ", q(email()), ", phone = ", q(phone()), f", updated_at = now() WHERE id = {ri(1, 10 ** 6)};"]
    elif f == 2:
        body = ["UPDATE payment_methods SET card_number = ", q(card()), ", card_last4 = '", f"{ri(0, 9999):04d}",
                f"' WHERE customer_id = {ri(1, 10 ** 6)} AND order_ref = '{luhn_invalid16()}';"]
    elif f == 3:
        body = ["INSERT INTO payouts (account_holder, iban, amount, currency) VALUES (", q(full_name()), ", ",
                q(iban()), f", {ri(1, 99999)}.{ri(0, 99):02d}, 'EUR');"]
    elif f == 4:
        body = ["SELECT id, email FROM customers WHERE ssn = ", q(ssn()), " OR email = ", q(email()), " LIMIT 1;"]
    elif f == 5:
        body = ["INSERT INTO audit_log (actor, ip, action, at) VALUES (", q(email()), ", ", q(ip_any(0.3)),
                f", 'login', to_timestamp({epoch()}));"]
    else:
        body = ["UPDATE users SET password_hash = '$2b$12$", rs(ALNUM + "./", 53).replace("..", "a."),
                "', password_changed = true, recovery_phone = ", q(phone()), f" WHERE id = {ri(1, 10 ** 6)};"]
    return [sql_prefix()] + body


@tpl("sql", 100, neg=True)
def sql_neg():
    f = R.randrange(8)
    if f == 0:
        s = f"SELECT * FROM orders WHERE id = {luhn_invalid16()} AND created_at > '{iso_date()}' ORDER BY id LIMIT {ri(1, 100)};"
    elif f == 1:
        s = f"UPDATE users SET password_changed = true, failed_logins = 0 WHERE id = {ri(1, 10 ** 6)};"
    elif f == 2:
        s = f"SELECT count(*) FROM sessions WHERE expires_at < to_timestamp({epoch()}) AND tokens > {ri(0, 9)};"
    elif f == 3:
        s = f"INSERT INTO ledger (ref, amount, currency, booked_on) VALUES ('{luhn_valid_noprefix()}', {ri(1, 9999)}.{ri(0, 99):02d}, 'USD', '{iso_date()}');"
    elif f == 4:
        s = f"-- rejected: UPDATE accounts SET iban = '{bad_iban()}' WHERE id = {ri(1, 999)}; check digits invalid"
    elif f == 5:
        s = f"SELECT id FROM people WHERE ssn = '{bad_ssn()}'; -- test fixture, invalid range"
    elif f == 6:
        s = f"DELETE FROM job_runs WHERE run_id = '{uuid4()}' AND duration_ms > {ri(100, 99999)};"
    else:
        s = f"CREATE INDEX CONCURRENTLY idx_{word()}_{word()} ON {ch(RESOURCES)} USING btree (created_at);"
    return [sql_prefix(), s]


# ---- HTTP header dumps ------------------------------------------------------------------------

REASON = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found", 304: "Not Modified",
          400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
          422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
          503: "Service Unavailable", 504: "Gateway Timeout"}


def status_line():
    code = status()
    return f"HTTP/1.1 {code} {REASON[code]}"


@tpl("http", 165)
def http_dump():
    pre = ch(["> ", ""])
    rp = "< " if pre else ""
    hdrs = [f"{method()} {api_path()} HTTP/1.1"]
    H = lambda *p: [pre] + list(p)
    lines = [H(hdrs[0])]
    hostv = ch([lambda: domain(), lambda: [ipv4(), f":{port()}"], lambda: ["[", ipv6(), f"]:{port()}"]])()
    lines.append(H("Host: ", hostv))
    lines.append(H("User-Agent: ", user_agent()))
    auth = R.randrange(8)
    if auth in (0, 6, 7):
        lines.append(H(ch(["Authorization", "authorization"]), ": ", ch(["Bearer", "bearer", "BEARER"]), " ", bearer_token()))
    elif auth == 1:
        lines.append(H("Authorization: Bearer ", jwt()))
    elif auth == 2:
        lines.append(H(ch(["Authorization", "Proxy-Authorization"]), ": Basic ",
                       (base64.b64encode(f"{first()}:{secret_value(url_safe=True)[0]}".encode()).decode(), "secret")))
    elif auth == 3:
        lines.append(H("Authorization: Token ", secret_value(url_safe=True)))
    elif auth == 4:
        lines.append(H("Authorization: Bearer ", bearer_token()))
    if chance(0.5):
        lines.append(H(ch(["X-Api-Key", "x-api-key", "X-API-KEY", "Api-Key"]), ": ", secret_value(url_safe=True)))
    if chance(0.3):
        lines.append(H(ch(["X-Auth-Token", "X-CSRF-Token", "X-Vault-Token"]), ": ", secret_value(url_safe=True)))
    if chance(0.5):
        lines.append(H("X-Forwarded-For: ", xff()))
    if chance(0.3):
        lines.append(H("X-Real-IP: ", ip_any(0.2)))
    if chance(0.15):
        lines.append(H("Forwarded: for=", ipv4(), ";proto=https;by=", ipv4()))
    if chance(0.15):
        lines.append(H('Forwarded: for="[', ipv6(), ']:', str(port()), '";proto=https'))
    if chance(0.4):
        lines.append(H("Cookie: sessionid=", hexs(32), "; ", ch(["csrftoken", "auth_token", "remember_token", "XSRF-TOKEN"]),
                       "=", secret_value(url_safe=True), f"; theme={ch(['dark', 'light'])}"))
    lines.append(H(f"Accept: {ch(['application/json', '*/*', 'text/html'])}"))
    if chance(0.4):
        lines.append(H(f"X-Request-Id: {uuid4()}"))
    if chance(0.4):
        lines.append(H(f"Content-Length: {ri(0, 9999)}"))
    out = join(lines, "\n")
    if chance(0.5):
        resp = [[rp, status_line()],
                [rp, f"Date: {http_date()}"], [rp, f"Server: nginx/1.{ri(20, 27)}.{ri(0, 4)}"],
                [rp, f"Content-Type: application/json"]]
        if chance(0.5):
            resp.append([rp, "Set-Cookie: ", ch(["refresh_token", "session_token", "access_token"]), "=",
                         secret_value(url_safe=True), "; Path=/; HttpOnly; Secure; SameSite=Lax"])
        if chance(0.3):
            resp.append([rp, f"ETag: \"{hexs(32)}\""])
        if chance(0.3):
            resp.append([rp, f"X-RateLimit-Remaining: {ri(0, 999)}"])
        if chance(0.4):
            resp.append(rp.strip())
            resp.append([rp, ch([lambda: ['{"access_token":"', jwt(), '","token_type":"Bearer","expires_in":3600}'],
                                 lambda: ['{"token_type":"Bearer","expires_in":', str(ri(60, 86400)), ',"scope":"read"}'],
                                 lambda: ['{"id":', str(ri(1, 999)), ',"email":"', email(), '"}']])()])
        out = [out, "\n", pre.strip(), "\n", join(resp, "\n")]
    return out


@tpl("http", 90, neg=True)
def http_dump_neg():
    pre = ch(["> ", ""])
    rp = "< " if pre else ""
    H = lambda *p: [pre] + list(p)
    lines = [H(f"{method()} {api_path()}", query(False) if chance(0.3) else "", " HTTP/1.1"),
             H(f"Host: {domain()}"), H(f"User-Agent: {user_agent()}"), H("Accept: */*")]
    if chance(0.5):
        lines.append(H(f"Cookie: theme={ch(['dark', 'light'])}; lang=en; _ga=GA1.2.{ri(10 ** 8, 10 ** 9)}.{epoch()}"))
    if chance(0.5):
        lines.append(H(f"X-Request-Id: {uuid4()}"))
    if chance(0.3):
        lines.append(H(f"If-None-Match: \"{hexs(32)}\""))
    if chance(0.3):
        lines.append(H(f"X-Client-Version: {version3()}"))
    resp = [[rp, status_line()], [rp, f"Date: {http_date()}"], [rp, f"Content-Length: {ri(0, 99999)}"],
            [rp, f"Server: {ch(['nginx/1.25.3', 'Apache/2.4.58 (Debian)', 'envoy', 'cloudflare'])}"],
            [rp, f"Cache-Control: max-age={ri(0, 86400)}"]]
    if chance(0.4):
        resp.append(rp.strip())
        resp.append([rp, '{"token_type":"Bearer","expires_in":' + str(ri(60, 86400)) + ',"max_tokens":' + str(ri(16, 4096)) + "}"])
    if chance(0.3):
        resp.append([rp, f"X-Amz-Cf-Id: {b64blob(42).rstrip('=')}"])
    return [join(lines, "\n"), "\n", pre.strip(), "\n", join(resp, "\n")]


# ---- URLs ---------------------------------------------------------------------------------------

@tpl("url", 200)
def url_pos():
    f = R.randrange(9)
    if f == 0:
        u = [ch(["postgres", "postgresql"]), "://", ch(["app", "svc_orders", "readonly", "postgres"]), ":", url_password(),
             "@", hostname(), f":{ch([5432, 6432])}/{word()}", ch(["", "?sslmode=require", "?sslmode=disable&connect_timeout=5"])]
    elif f == 1:
        u = ["https://", first(), ":", url_password(), "@", hostname(), "/", ch(RESOURCES), "/", str(ri(1, 9999))]
    elif f == 2:
        u = ["redis://:", url_password(), "@", hostname(), f":{ch([6379, 6380])}/{ri(0, 15)}"]
    elif f == 3:
        u = [ch(["mysql", "amqp", "mongodb", "ftp"]), "://", ch(["root", "guest", "admin", "ingest"]), ":", url_password(),
             "@", ipv4(), f":{ch([3306, 5672, 27017, 21])}/", word()]
    elif f == 4:
        u = [f"https://{domain()}/reset", query(True, 1, 3)]
    elif f == 5:
        u = ["http://[", ipv6(), f"]:{port()}/status"]
    elif f == 6:
        u = ["mailto:", email(), "?subject=", word()]
    elif f == 7:
        u = ["http://", ipv4(), f":{port()}{api_path()}", query(chance(0.5), 1, 2) if chance(0.5) else ""]
    else:
        u = ["mongodb://", ch(["admin", "app"]), ":", url_password(), "@", "mongo-0:27017,mongo-1:27017,mongo-2:27017/",
             word(), "?replicaSet=rs0&authSource=admin"]
    lead = ch([f"{iso_ts_z()} INFO connecting to ", f"{iso_ts_z()} WARN retrying ", "GET ", "fetching ",
               f"level=info msg=\"dial\" url=", f"{iso_ts_z()} DEBUG redirect Location: "])
    if lead.endswith("url="):
        return [lead, '"', u, '"']
    tail = ch(["", f" ({duration()})", f" attempt={ri(1, 5)}", f" -> {status()}"])
    return [lead, u, tail]


@tpl("url", 90, neg=True)
def url_neg():
    u = ch([
        lambda: f"ssh://git@github.com/{word()}/{word()}.git",
        lambda: f"ssh://git@gitlab.{dom_label()}.com:2222/{word()}/{word()}.git",
        lambda: f"https://{domain()}/assets/{ch(['icon@2x.png', 'logo@3x.png', 'banner@2x.png'])}",
        lambda: f"https://registry.npmjs.org/lodash/-/lodash-4.17.{ri(10, 21)}.tgz",
        lambda: f"https://cdn.jsdelivr.net/npm/lodash@4.17.{ri(10, 21)}/lodash.min.js",
        lambda: f"https://github.com/{word()}/{word()}/commit/{git_sha()}",
        lambda: f"http://app@localhost:{port()}/",
        lambda: f"postgres://{word()}@{hostname()}:5432/{word()}",
        lambda: f"redis://{hostname()}:6379/{ri(0, 15)}",
        lambda: f"https://{domain()}/callback?token_type=Bearer&expires_in=3600&max_tokens={ri(64, 4096)}",
        lambda: f"https://{domain()}/login?password=&next=/{ch(RESOURCES)}",
        lambda: f"docker.io/library/{ch(['nginx', 'redis', 'postgres'])}@sha256:{sha256_hex()}",
        lambda: f"https://{domain()}/download/v{version3()}/{word()}-linux-amd64.tar.gz",
        lambda: f"https://{domain()}/api/v{ri(1, 3)}/{ch(RESOURCES)}/{uuid4()}?ts={epoch()}",
        lambda: f"https://{domain()}/search?q={word()}&page={ri(1, 9)}&sort=desc",
    ])()
    lead = ch([f"{iso_ts_z()} INFO fetching ", "cloning ", f"{iso_ts_z()} DEBUG GET ", "pulling ", "open "])
    return [lead, u, ch(["", f" ({duration()})", f" {status()}"])]


# ---- stack traces ---------------------------------------------------------------------------------

def java_frames(n):
    pk = ch(["com.example", "org.acme", "io.shop"])
    cl = ch(["PaymentService", "UserController", "OrderRepository", "AuthFilter", "LedgerClient"])
    out = []
    for _ in range(n):
        c = ch([cl, "Dispatcher", "Handler", "Invoker"])
        out.append(f"\tat {pk}.{service()}.{c}.{ch(['handle', 'process', 'charge', 'lambda$run$0', 'invoke'])}({c}.java:{ri(10, 900)})")
    out.append(f"\tat java.base/java.lang.Thread.run(Thread.java:{ri(700, 1600)})")
    return "\n".join(out)


def pii_message():
    return ch([
        lambda: ["duplicate email ", email()],
        lambda: ["card ", card(), " declined"],
        lambda: ["invalid SSN ", ssn(), " for applicant"],
        lambda: ["cannot reach ", ip_port(0.3)],
        lambda: ["sms to ", phone(), " failed"],
        lambda: ["iban ", iban(False), " rejected by partner"],
        lambda: ["auth failed with token=", secret_value(url_safe=True)],
        lambda: ["connection refused: postgres://app:", url_password(), "@", hostname(), ":5432/", word()],
        lambda: ["user ", email(), " from ", ipv4(), " locked"],
    ])()


@tpl("stack", 80)
def stack_java():
    exc = ch(["java.lang.IllegalStateException", "com.example.billing.CardDeclinedException",
              "org.springframework.dao.DataIntegrityViolationException", "java.lang.IllegalArgumentException"])
    head = [f"{iso_ts()} ERROR [{ch(['main', 'http-nio-8080-exec-' + str(ri(1, 20))])}] "
            f"{ch(['c.e.b.PaymentService', 'o.a.c.c.C.[.[.[/].[dispatcherServlet]'])} - request failed\n"]
    body = [exc, ": ", pii_message(), "\n", java_frames(ri(2, 6))]
    if chance(0.5):
        body += ["\nCaused by: java.net.ConnectException: Connection refused: /", ipv4(), f":{ch([5432, 6379, 9092])}",
                 "\n", java_frames(ri(1, 3)), f"\n\t... {ri(3, 40)} more"]
    return head + body


@tpl("stack", 80)
def stack_python():
    frames = []
    for _ in range(ri(2, 4)):
        frames.append(f'  File "/app/{ch(SERVICES)}/{ch(["views", "handlers", "tasks", "client"])}.py", line {ri(5, 500)}, in {ch(["post", "run", "send", "charge", "create_user"])}\n'
                      f"    {ch(['return self._send(req)', 'raise ValueError(msg)', 'resp.raise_for_status()', 'user = create_user(payload)'])}")
    exc = ch([
        lambda: ["ValueError: ", pii_message()],
        lambda: ["requests.exceptions.ConnectionError: HTTPSConnectionPool(host='", ipv4(), f"', port={ch([443, 8443])}): Max retries exceeded"],
        lambda: ['psycopg2.OperationalError: connection to server at "db.internal" (', ipv4(), '), port 5432 failed: FATAL:  password authentication failed for user "app"'],
        lambda: ["KeyError: ", "'", email(), "'"],
        lambda: ["smtplib.SMTPRecipientsRefused: {'", email(), "': (550, b'5.1.1 user unknown')}"],
    ])()
    return ["Traceback (most recent call last):\n", "\n".join(frames), "\n"] + exc


@tpl("stack", 70)
def stack_go():
    msg = ch([
        lambda: ["panic: dial tcp ", ip_port(0.3), ": connect: connection refused"],
        lambda: ["panic: dial udp [", ipv6_zoned(), f"]:{ch([53, 123, 547])}: connect: network is unreachable"],
        lambda: ["panic: ", pii_message()],
        lambda: ["panic: runtime error: invalid memory address or nil pointer dereference [recovered] while handling ", email()],
        lambda: ['panic: pq: password authentication failed for user "', word(), '" (host=', ipv4(), ")"],
    ])()
    frames = []
    for _ in range(ri(2, 4)):
        fn = ch(["main.(*Server).handle", "main.connect", "github.com/acme/api/internal/db.Open", "net/http.HandlerFunc.ServeHTTP"])
        frames.append(f"{fn}(0xc{hexs(9)}, {{0x{hexs(6)}, 0x{hexs(2)}}})\n\t/src/{ch(['app', 'internal/db', 'cmd/api'])}/{ch(['main', 'server', 'db'])}.go:{ri(10, 400)} +0x{hexs(3)}")
    return msg + [f"\n\ngoroutine {ri(1, 300)} [running]:\n", "\n".join(frames), "\nexit status 2"]


@tpl("stack", 90, neg=True)
def stack_neg():
    f = R.randrange(5)
    if f == 0:
        return [f"{iso_ts()} ERROR [main] c.e.App - startup failed\njava.lang.NullPointerException: Cannot invoke "
                f"\"String.length()\" because \"{word()}\" is null\n", java_frames(ri(2, 6))]
    if f == 1:
        last_line = ch([f"TimeoutError: operation took {duration()} (limit {ri(1, 30)}s), request_id={uuid4()}",
                        f"jwt.exceptions.InvalidTokenError: {prose_colon()}"])
        return ["Traceback (most recent call last):\n"
                f'  File "/usr/local/lib/python3.11/site-packages/{word()}/core.py", line {ri(5, 900)}, in run\n'
                "    return fn(*args, **kwargs)\n", last_line]
    if f == 2:
        return [f"panic: runtime error: index out of range [{ri(5, 99)}] with length {ri(1, 4)}\n\ngoroutine {ri(1, 99)} [running]:\n"
                f"main.process({{0xc{hexs(9)}, 0x{hexs(2)}, 0x{hexs(2)}}})\n\t/src/app/main.go:{ri(10, 300)} +0x{hexs(3)}\nexit status 2"]
    if f == 3:
        return ["terminate called after throwing an instance of 'std::out_of_range'\n"
                f"  what():  vector::_M_range_check: __n (which is {ri(5, 99)}) >= this->size() (which is {ri(1, 4)})\n"
                f"#0  0x{hexs(12)} in std::vector<std::string>::at (this=0x{hexs(12)}, __n={ri(5, 99)})\n"
                f"#1  0x{hexs(12)} in {ch(['dead::beef', 'cafe::babe'])}() at src/{word()}.cc:{ri(10, 300)}"]
    return [f"thread 'main' panicked at src/{word()}.rs:{ri(10, 400)}:{ri(1, 40)}:\n"
            "called `Result::unwrap()` on an `Err` value: Os { code: 2, kind: NotFound, message: \"No such file or directory\" }\n"
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace"]


# ---- k8s / containers ---------------------------------------------------------------------------

@tpl("k8s", 110)
def k8s_pos():
    pod = pod_name()
    f = R.randrange(7)
    if f == 0:
        return [f"I{klog_ts()}       1 event.go:{ri(100, 400)}] \"Event occurred\" object=\"default/{pod}\" kind=\"Pod\" "
                f"reason=\"Scheduled\" podIP=\"", ipv4(), "\" hostIP=\"", ipv4(), "\""]
    if f == 1:
        inner = J(O(("level", level()), ("msg", S(*pii_message())), ("pod", pod)))
        return [iso_ts_z().replace("Z", f"{ri(100000, 999999)}Z"), " ", ch(["stdout", "stderr"]), " F ", inner]
    if f == 2:
        return [f"W{klog_ts()}    {ri(1, 99)} prober.go:{ri(100, 200)}] \"Probe failed\" probeType=\"Readiness\" pod=\"default/{pod}\" "
                "output=\"Get \\\"http://", ipv4(), f":{ch([8080, 8443, 9090])}/healthz\\\": dial tcp ", ipv4(),
                f":{ch([8080, 8443])}: connect: connection refused\""]
    if f == 3:
        lines = ["Environment:", f"  POD_NAME:        {pod}", ["  DB_PASSWORD:     ", secret_value(url_safe=True)],
                 ["  DATABASE_URL:    postgres://app:", url_password(), "@", hostname(), "/app"],
                 ["  ADMIN_EMAIL:     ", email()], ["  PWD:             /app"]]
        if chance(0.5):
            lines.append(["  API_TOKEN:       ", secret_value(url_safe=True)])
        return join(lines, "\n")
    if f == 4:
        return ["apiVersion: v1\nkind: Secret\nmetadata:\n  name: ", word(), "-credentials\n  namespace: ",
                ch(["default", "prod"]), "\ntype: Opaque\ndata:\n  username: ", b64blob(8).rstrip("="),
                "\n  ", ch(["db_password", "admin-password", "redis_password", "DB_PASSWORD"]), ": ",
                (base64.b64encode(secret_value(url_safe=True)[0].encode()).decode(), "secret"),
                "\n  ", ch(["api-token", "api_token", "webhook-secret"]), ": ",
                (base64.b64encode(secret_value(url_safe=True)[0].encode()).decode(), "secret")]
    if f == 5:
        return [f"{iso_ts_z()} INFO ingress-nginx ", ipv4(), f" - - [{clf_ts()}] \"{method()} {api_path()}",
                query(True, 1, 2), f" HTTP/1.1\" {status()} {ri(1, 9999)} \"-\" \"{user_agent()}\" {ri(100, 999)} "
                f"{secs()} [default-{word()}-80] [] ", ipv4(), f":{ch([80, 8080])} {ri(1, 9999)} {secs()} {status()} {hexs(32)}"]
    return [f"time=\"{iso_ts_z()}\" level=info msg=\"", "pod sandbox ready\" pod=", pod, " ip=", ip_any(0.4),
            f" sandbox={hexs(64)}"]


@tpl("k8s", 90, neg=True)
def k8s_neg():
    pod = pod_name()
    return ch([
        lambda: f"I{klog_ts()}       1 event.go:{ri(100, 400)}] \"Event occurred\" object=\"default/{pod}\" kind=\"Pod\" reason=\"Pulled\" "
                f"message=\"Successfully pulled image \\\"registry.example.com/{word()}:{version3()}\\\" in {ri(1, 9)}.{ri(100, 999)}s\"",
        lambda: f"Normal   Pulling    {ri(1, 59)}s   kubelet  Pulling image \"{word()}@sha256:{sha256_hex()}\"",
        lambda: f"Warning  BackOff    {ri(1, 59)}m   kubelet  Back-off restarting failed container {word()} in pod {pod}_default({uuid4()})",
        lambda: f"E{klog_ts()}    {ri(1, 99)} pod_workers.go:{ri(1000, 1300)}] \"Error syncing pod, skipping\" pod=\"default/{pod}\" podUID=\"{uuid4()}\"",
        lambda: f"{iso_ts_z()} stdout F {{\"level\":\"info\",\"msg\":\"ready\",\"took\":\"{duration()}\",\"version\":\"{version3()}\"}}",
        lambda: f"{pod}   {ri(0, 1)}/1     CrashLoopBackOff   {ri(1, 40)} ({ri(1, 59)}s ago)   {ri(1, 30)}d",
        lambda: f"time=\"{iso_ts_z()}\" level=info msg=\"StartContainer for \\\"{hexs(64)}\\\" returns successfully\"",
        lambda: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  LOG_LEVEL: info\n"
                f"  MAX_TOKENS: \"{ri(64, 4096)}\"\n  TOKEN_TYPE: Bearer\n  PWD: /app\n  BUILD: {git_sha()}",
        lambda: f"horizontal-pod-autoscaler  New size: {ri(2, 20)}; reason: cpu resource utilization (percentage of request) above target",
    ])()


# ---- generic applications, PEM blocks, AWS credentials ----------------------------------------------

@tpl("app", 140)
def app_pem_raw():
    missing = False
    key = private_key(nl="\n")
    lead = ch([f"{iso_ts()} WARN tls: loaded key material from /etc/ssl/private/{word()}.key\n",
               f"{iso_ts()} DEBUG writing ~/.ssh/id_{ch(['rsa', 'ed25519', 'ecdsa'])}:\n",
               "$ cat /run/secrets/signing-key\n", f"{iso_ts()} ERROR vault read returned:\n"])
    out = [lead]
    if chance(0.25):
        out += [pem_text("CERTIFICATE"), "\n"]
    out.append(key)
    if chance(0.4):
        out.append(ch([f"\nkey fingerprint SHA256:{b64blob(32).rstrip('=')}", "\n", f"\n({ri(1, 4)} blocks, {size_str()})"]))
    return out


@tpl("app", 2)
def app_pem_truncated():
    label = pem_private_label()
    return [f"{iso_ts()} ERROR secret dump truncated at {ri(1, 8)}KiB:\n", (pem_text(label, end=False), "private_key")]


@tpl("app", 140)
def app_aws():
    f = R.randrange(6)
    kid, sk = aws_key_id(), aws_secret()
    if f == 0:
        return [f"{iso_ts()} INFO boto3 credentials found: access_key=", kid, " secret_key=", sk, f" region={ch(['us-east-1', 'eu-central-1'])}"]
    if f == 1:
        return ["[default]\naws_access_key_id = ", kid, "\naws_secret_access_key = ", sk, f"\nregion = {ch(['us-east-1', 'eu-west-1'])}"]
    if f == 2:
        return ["export AWS_ACCESS_KEY_ID=", kid, "\nexport AWS_SECRET_ACCESS_KEY=", sk]
    if f == 3:
        return [f"{iso_ts()} WARN aws sdk: using static credentials ", kid, " / ", sk, f" (commit {git_sha()})"]
    if f == 4:
        return [f"{iso_ts()} ERROR AccessDenied: User with key ", kid, f" is not authorized to perform s3:GetObject, request {rs(UP + DG, 16)}"]
    return ["AWS_ACCESS_KEY_ID: ", kid, "\nAWS_SECRET_ACCESS_KEY: ", sk, "\nAWS_REGION: us-west-2"]


@tpl("app", 150)
def app_pos():
    f = R.randrange(10)
    ts = f"{iso_ts()} {ch(['INFO', 'WARN', 'ERROR', 'DEBUG'])} [{service()}] "
    if f == 0:
        return [ts, "sent receipt to ", email(), ", amount ", price(), ", order ", order_id()]
    if f == 1:
        return [ts, f"calling https://api.{domain()}/v1/charges ({duration()}) with Authorization: Bearer ", bearer_token()]
    if f == 2:
        return [ts, "exec: java -Xmx512m -D", ch(["db.password", "spring.datasource.password", "keystore.passphrase"]), "=",
                secret_value(url_safe=True), f" -jar /opt/{word()}.jar --server.port={port()}"]
    if f == 3:
        return [ts, "PGPASSWORD=", secret_value(url_safe=True), f" psql -h {hostname()} -U app -c 'select 1'"]
    if f == 4:
        return [ts, "2fa code sent to ", phone(), " for ", email()]
    if f == 5:
        return [ts, "kyc: name=\"", full_name(), "\" ssn=", ssn(), " dob=", date_only(), " ", lookalike_text()]
    if f == 6:
        return [ts, "refund to ", iban(), "; card ", card(), f"; {lookalike_text()}"]
    if f == 7:
        return [ts, "upstream rejected bearer ", bearer_token(), f" ({status()}) after {duration()}"]
    if f == 8:
        return [ts, "webhook signature secret=", secret_value(url_safe=True), " token=", jwt(), f" {lookalike_text()}"]
    return [ts, "git: Author: ", full_name(), " <", email(), f"> commit {git_sha()}"]


@tpl("app", 180, neg=True)
def app_neg():
    ts = f"{iso_ts()} {ch(['INFO', 'WARN', 'DEBUG'])} [{service()}] "
    return ch([
        lambda: [ts, lookalike_text(), ", ", lookalike_text(), ", ", lookalike_text()],
        lambda: [ts, f"agent {version_kv()} starting, build {git_sha(True)}, pid {ri(100, 99999)}"],
        lambda: [ts, f"invoice {order_id()} total {price()} due {date_only()}"],
        lambda: [ts, f"copied {size_str()} in {duration()} ({ri(1, 999)} files)"],
        lambda: [ts, f"card ending {ri(0, 9999):04d} charged {price()}; ref {luhn_valid_noprefix()} / {luhn_invalid16()}"],
        lambda: [ts, f"snmp get {oid()} = {ri(0, 10 ** 6)}"],
        lambda: [ts, f"checksum mismatch: expected {sha256_hex()} got {sha256_hex()}"],
        lambda: [ts, f"Override check: @Override missing on {word()}()"],
        lambda: [ts, f"npm install lodash@4.17.{ri(10, 21)} react@18.{ri(0, 3)}.0 --save"],
        lambda: [ts, f"rendering {ch(['icon@2x.png', 'logo@3x.png'])} for user@localhost"],
        lambda: [ts, f"interface eth0 hwaddr {mac()} mtu {ch([1500, 9000])}"],
        lambda: [ts, f"aws s3 sync ./dist s3://{word()}-assets --region us-east-1 --sse-c-key {b64blob(32)}"],
        lambda: [ts, f"aws: request {uuid4()} etag {hexs(32)} commit {git_sha()}"],
        lambda: [ts, f"parsed {ch(['value', 'field'])} {bad_octets()} as invalid address; seq {five_part()}"],
        lambda: [ts, f"cron next run at {epoch()} ({date_only()}), last took {duration()}"],
        lambda: [ts, f"tokens={ri(1, 9)} max_tokens={ri(64, 4096)} password_changed=false token_type=Bearer"],
        lambda: [ts, f"login form: password={masked()} remember=true"],
        lambda: [ts, f"env PWD=/home/{first()} SHELL=/bin/bash LANG=en_US.UTF-8"],
        lambda: [ts, f"template std::vector<{ch(['int', 'std::string'])}> instantiated; {ch(['dead::beef', 'face::feed'])} unresolved"],
        lambda: [ts, f"phone validation rejected {ri(100, 199)}-{ri(200, 999)}-{ri(1000, 9999)} (area code starts with 1) and {ri(2000000000, 9999999999)}"],
        lambda: [ts, f"ssn {bad_ssn()} rejected (invalid range)"],
        lambda: [ts, f"iban {bad_iban()} rejected (bad check digits)"],
        lambda: [ts, f"user agent {user_agent()}"],
        lambda: [ts, f"dns: {ch(['version.bind', 'example.com'])} TXT \"{b64blob(44)}\""],
        lambda: [ts, f"git clone ssh://git@github.com/{word()}/{word()}.git ({duration()})"],
        lambda: [ts, prose_colon()],
        lambda: [ts, prose_colon(), f" after {duration()}"],
    ])()


def prose_colon():
    """README: a lower-case word before ': ' in prose is not a key."""
    return ch([f"invalid token: {ch(['expired', 'signature mismatch', 'malformed'])}",
               f"refresh token: not found for session {uuid4()}",
               "reset password: confirmation mail queued",
               f"rotating api secret: {ch(['started', 'done', 'skipped'])}",
               f"missing token: request {hexs(16)} rejected",
               "oauth access token: revoked by user",
               f"checking passphrase: {ch(['ok', 'too short', 'reused'])}",
               f"client secret: expires in {ri(1, 90)} days"])


@tpl("app", 45, neg=True)
def app_neg_pem():
    label = ch(["CERTIFICATE", "CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY"])
    out = [f"{iso_ts()} INFO {ch(['loaded CA bundle', 'peer certificate', 'jwks public key', 'server cert'])}:\n", pem_text(label)]
    if chance(0.3):
        out += ["\n", pem_text("CERTIFICATE")]
    return out


# ---- KYC / banking lines (SSNs, IBANs, cards together) ---------------------------------------------

@tpl("logfmt", 80)
def logfmt_kyc():
    pairs = lf_base(ch(["kyc check passed", "payout account added", "identity verified", "mandate signed"]))
    pairs += [("svc", "kyc"), ("customer", S(email())), ("ssn", S(ssn() if chance(0.6) else ssn_bare())),
              ("iban", S(iban()))]
    if chance(0.4):
        pairs.append(("card", S(card())))
    pairs += [("ref", luhn_valid_noprefix()), ("score", f"0.{ri(10, 99)}")]
    if chance(0.4):
        pairs.append(("ssn_check", '"' + bad_ssn() + '"'))
    return lf(*pairs)


@tpl("sql", 70)
def sql_kyc():
    cols, vals = ["customer_id", "ssn", "iban"], [str(ri(1, 10 ** 6)), q(ssn()), q(iban())]
    if chance(0.5):
        cols.append("card_number")
        vals.append(q(card()))
    cols.append("verified_on")
    vals.append(q(iso_date()))
    return [sql_prefix(), "INSERT INTO kyc_records (", ", ".join(cols), ") VALUES (", join(vals, ", "), ");"]


@tpl("app", 50)
def app_kyc():
    ts = f"{iso_ts()} {ch(['INFO', 'WARN'])} [kyc] "
    return [ts, "applicant ", full_name(), " ssn ", ssn(), ", payout iban ", iban(), "; ",
            ch([lambda: ["card ", card()], lambda: ["phone ", phone()], lambda: ["email ", email()]])(),
            f"; {lookalike_text()}"]


# ---- Bearer tokens outside header dumps, AWS keys in logfmt ---------------------------------------

@tpl("nginx", 60)
def nginx_auth_logged():
    """log_format with "$http_authorization" appended."""
    return [ipv4() if chance(0.8) else ipv6(), " - - [", clf_ts(), '] "', method(), " ", api_path(), ' HTTP/1.1" ',
            str(status()), " ", str(ri(0, 9999)), ' "-" "', user_agent(), '" "', ch(["Bearer", "Bearer", "bearer"]), " ",
            bearer_token() if chance(0.8) else jwt(), '"', f" {secs()}" if chance(0.5) else ""]


@tpl("logfmt", 70)
def logfmt_bearer():
    pairs = lf_base(ch(["proxying request", "upstream call", "auth header forwarded", "token introspection"]))
    pairs += [("svc", service()), (ch(["auth", "upstream_auth", "hdr_auth", "forwarded_auth"]),
                                   S(ch(["Bearer", "Bearer", "bearer", "BEARER"]), " ", bearer_token())),
              ("path", api_path()), ("status", status())]
    pairs += lookalike_pairs(ri(0, 2))
    return lf(*pairs)


@tpl("json", 60)
def json_bearer():
    pairs = jbase(msg=ch(["outgoing request", "forwarding credentials", "introspect"]))
    pairs += [("upstream", f"https://{domain()}{api_path()}"),
              (ch(["auth_header", "forwarded_auth", "upstream_auth"]), S("Bearer ", bearer_token())),
              ("status", status()), ("took", duration())]
    return J(O(*pairs))


@tpl("app", 50)
def app_bearer_text():
    ts = f"{iso_ts()} {ch(['INFO', 'WARN', 'ERROR'])} [{service()}] "
    return [ts, ch(["rejected ", "refreshing expired ", "cached ", "revoked "]), ch(["Bearer", "bearer"]), " ",
            bearer_token() if chance(0.75) else jwt(), f" for {ch(RESOURCES)} ({status()}, {duration()})"]


@tpl("logfmt", 60)
def logfmt_aws():
    pairs = lf_base(ch(["aws credentials loaded", "s3 upload", "sts assume-role ok"]))
    pairs += [("svc", service()), ("aws_access_key_id", aws_key_id()), ("aws_secret_access_key", aws_secret()),
              ("region", ch(["us-east-1", "eu-west-1", "ap-northeast-1"])), ("commit", git_sha())]
    if chance(0.3):
        pairs.append(("request_id", uuid4()))
    return lf(*pairs)


# ---- national phone numbers, percent-encoded addresses, versions like addresses --------

def phone_trunk():
    """A national number with a trunk prefix, as European countries write them."""
    f = R.randrange(13)
    if f == 0:  # DE landline
        area, sub = ch(["30", "40", "89", "69", "221", "211", "711", "351", "341", "421"]), _nz(ri(6, 8))
        s = ch([f"0{area} {sub}", f"0{area}/{sub}", f"0{area}-{sub}", f"(0{area}) {sub}",
                f"0{area} {sub[:3]} {sub[3:]}", f"(0{area}) {sub[:3]} {sub[3:]}"])
    elif f == 1:  # DE mobile
        pre, sub = "01" + ch("567") + _d(1), _nz(ri(7, 8))
        s = ch([f"{pre} {sub}", f"{pre}/{sub}", f"{pre}-{sub}", f"{pre} {sub[:4]} {sub[4:]}"])
    elif f == 2:  # AT
        s = ch([f"0664 {_nz(7)}", f"0699 {_nz(3)} {_d(4)}", f"01 {_nz(7)}", f"0316 {_nz(6)}"])
    elif f == 3:  # CH
        s = f"0{ch(['44', '22', '31', '61', '79', '78'])} {_nz(3)} {_d(2)} {_d(2)}"
    elif f == 4:  # NL
        s = ch([f"020 {_nz(3)} {_d(4)}", f"06-{_d(8)}", f"06 {_d(8)}", f"010-{_nz(3)} {_d(4)}"])
    elif f == 5:  # BE
        s = ch([f"02 {_nz(3)} {_d(2)} {_d(2)}", f"0470 {_d(2)} {_d(2)} {_d(2)}", f"09 {_nz(3)} {_d(2)} {_d(2)}"])
    elif f == 6:  # SE
        s = ch([f"08-{_nz(3)} {_d(3)} {_d(2)}", f"070-{_nz(3)} {_d(2)} {_d(2)}", f"031-{_nz(3)} {_d(2)} {_d(2)}"])
    elif f == 7:  # IT landline
        s = f"0{ch('26')} {_nz(4)} {_d(4)}"
    elif f == 8:  # IE
        s = ch([f"01 {_nz(3)} {_d(4)}", f"087 {_nz(3)} {_d(4)}"])
    elif f == 9:  # FI
        s = ch([f"040 {_nz(7)}", f"09 {_nz(4)} {_d(4)}"])
    elif f == 10:  # FR with dashes or dots
        sep = ch(["-", "."])
        s = "0" + ch("1234567") + "".join(sep + _d(2) for _ in range(4))
    elif f == 11:  # UK
        s = ch([f"0121 {_nz(3)} {_d(4)}", f"01632 {_nz(6)}", f"0161 {_nz(3)} {_d(4)}"])
    else:  # US written with parentheses or mixed separators
        a, b, c = phone_us_parts()
        s = ch([f"{a} {b}-{c}", f"1 ({a}) {b}-{c}", f"({a}){b}-{c}", f"({a}) {b} {c}"])
    return (s, "phone")


def phone_grouped():
    """A national number without a trunk prefix (Spain, Italy's mobiles, Poland,
    Denmark, Norway, Portugal): a phone only as the value of a phone field."""
    g = ch([
        lambda: [ch("67") + _d(2), _d(2), _d(2), _d(2)], lambda: [ch("67") + _d(2), _d(3), _d(3)],
        lambda: ["9" + ch("1345"), _d(3), _d(2), _d(2)], lambda: ["3" + _d(2), _d(3), _d(4)],
        lambda: [ch("5678") + _d(2), _d(3), _d(3)], lambda: [_nz(2), _d(2), _d(2), _d(2)],
        lambda: [ch("49") + _d(2), _d(2), _d(3)], lambda: ["9" + ch("1236") + _d(1), _d(3), _d(3)],
    ])()
    return (ch([" ", " ", "-", "."]).join(g), "phone")


PHONE_KEYS = ["phone", "phone_number", "mobile", "customer_phone", "tel", "Tel.", "telefono", "Telefon",
              "msisdn", "contact_phone", "fax", "mobile_no", "handy", "cell", "phoneNumber", "TEL", "tel_nr"]


def phone_field(value, key=None):
    """`value` (labeled) as the value of a phone key, in one of the usual notations."""
    key = key or ch(PHONE_KEYS)
    f = R.randrange(4)
    if f == 0:
        return [f'"{key}": "', value, '"']
    if f == 1:
        return [key, '="', value, '"']
    if f == 2:
        return [key.capitalize() if key.islower() else key, ": ", value]
    return [key, " ", value]


@tpl("app", 170)
def national_phones():
    lead = ch([f"{iso_ts_z()} INFO ", f"{iso_ts_z()} WARN ", f"level=info ts={iso_ts_z()} ", "", f"[{service()}] "])
    what = ch(["customer updated", "callback requested", "contact saved", "sms sent", "order confirmed",
               "Kontakt gespeichert", "rappel demande"])
    f = R.randrange(3)
    if f == 0:
        return [lead, what, " ", phone_field(phone_trunk())]
    if f == 1:
        return [lead, what, " ", phone_field(phone_grouped())]
    return [lead, what, ": call ", phone_trunk(), ch(["", " today", f" ({first()})", " before 18:00"])]


@tpl("json", 60)
def json_national_phones():
    return J(O(("ts", iso_ts_z()), ("level", "info"), ("msg", "profile updated"), ("user_id", ri(1, 99999)),
               ("phone", S(phone_trunk() if chance(0.5) else phone_grouped()))))


def pct_local():
    f, l = first(), last()
    local = ch([f + "." + l, f + "+" + word(), f + "_" + l, f[0] + l + str(ri(1, 99)), f + "-" + l])
    out = local.replace("+", "%2B")
    if chance(0.3):
        out = out.replace(".", "%2E")
    if chance(0.2):
        out = out.replace("_", "%5F")
    return out


@tpl("url", 110)
def url_pct_email():
    addr = (pct_local() + "%40" + domain(), "email")
    f = R.randrange(5)
    if f == 0:
        u = [f"GET /api/{ch(['subscribe', 'signup', 'invite', 'users/lookup'])}?email=", addr,
             f"&plan={word()} HTTP/1.1"]
    elif f == 1:
        u = [f"https://{domain()}/login?redirect=%2Fverify%3Femail%3D", addr, f"%26code%3D{ri(100000, 999999)}"]
    elif f == 2:
        u = [f"https://{domain()}/unsubscribe?u=", addr, f"&list={word()}"]
    elif f == 3:
        u = [f"{iso_ts_z()} INFO callback url=https://{domain()}/cb?state={hexs(8)}&login_hint=", addr]
    else:
        u = [f"{ch(['POST', 'GET'])} /track?e=", addr, f"&t={epoch()} {status()}"]
    return u


@tpl("app", 110, neg=True)
def versions_like_addresses():
    v = version4()
    return ch([
        lambda: f"{iso_ts_z()} INFO loaded lib{word()}-{v}.so",
        lambda: f"{iso_ts_z()} INFO deploying {word()}-{v}.jar to {service()}",
        lambda: f"pip install {word()}=={v}",
        lambda: f"requirement {word()}>={v} satisfied",
        lambda: f"artifact {word()}-{v}-SNAPSHOT uploaded",
        lambda: f"{service()} release {v} rolled out",
        lambda: f"level=info msg=\"started\" build={v}",
        lambda: f"device {hexs(6)} firmware {v} ok",
        lambda: f"fw={v} board=rev{ri(1, 9)}",
        lambda: f"package {word()}_{v} installed",
        lambda: f"{word()} {v}+build{ri(1, 99)} ready",
        lambda: f"fetched {word()}-{v}.tar.gz ({size_str()})",
        lambda: f"image {word()}:{version3()} rev {v}",
    ])()


@tpl("app", 90, neg=True)
def national_phone_look_alikes():
    return ch([
        lambda: f"{iso_ts_z()} INFO report for 01.{ri(1, 12):02d}.{ri(2019, 2025)} at {ri(10, 23)}:{ri(10, 59)}",
        lambda: f"batch 0{ri(1, 9)}-{ri(10, 28)}-{ri(2019, 2025)} {ri(10, 23)}:{ri(10, 59)}:{ri(10, 59)} done",
        lambda: f"schedule 0{ri(1, 9)}/{ri(10, 28)}/{ri(2019, 2025)} ok",
        lambda: f"load 0.{ri(10, 99)} 0.{ri(10, 99)} 0.{ri(10, 99)}",
        lambda: f"rows=\"{ch('67')}{_d(2)} {_d(2)} {_d(2)} {_d(2)}\" shards={ri(2, 9)}",
        lambda: f"hotel_id=\"{_nz(3)} {_d(2)} {_d(2)} {_d(2)}\"",
        lambda: f"dims {ri(1000, 1999)} {ri(100, 999)} {ri(10, 99)} {ri(10, 99)}",
        lambda: f"retries 0 {ri(1, 9)} {ri(1, 9)} {ri(1, 9)}",
        lambda: f"quantiles 05 {ri(10, 49)} {ri(50, 89)} {ri(90, 99)}",
        lambda: f"counters intel {_nz(2)} {_d(2)} {_d(2)} {_d(2)}",
    ])()


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

@tpl("app", 60, neg=True)
def app_compact_header():
    """README: a compact `yymmdd hhmmss pid` header (HDFS) is not a phone, even when
    the time starts with `00`."""
    day = f"{ri(8, 25):02d}{ri(1, 12):02d}{ri(1, 28):02d}"
    t = f"{ri(0, 1) and ri(0, 23) or 0:02d}{ri(0, 59):02d}{ri(0, 59):02d}"
    msg = ch([
        f"dfs.DataNode$PacketResponder: PacketResponder {ri(0, 2)} for block blk_{ri(10 ** 17, 10 ** 18)} terminating",
        f"dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/root/part-{ri(0, 99999):05d}",
        f"dfs.DataBlockScanner: Verification succeeded for blk_-{ri(10 ** 17, 10 ** 18)}",
        f"worker.Pool: {ri(1, 64)} of {ri(64, 128)} threads busy",
    ])
    return [f"{day} {t} {ri(1, 99999)} {ch(['INFO', 'WARN'])} {msg}"]


def main():
    stats = "--stats" in sys.argv
    records = []
    rejects = {}
    for kind, neg, count, fn in TEMPLATES:
        for _ in range(count):
            last = None
            for _attempt in range(400):
                text, spans = build(fn())
                if neg and spans:
                    raise SystemExit(f"{fn.__name__}: negative template produced labels")
                if not neg and not spans:
                    last = ["positive template produced no label"]
                    rejects.setdefault(fn.__name__, {}).setdefault(last[0], 0)
                    rejects[fn.__name__][last[0]] += 1
                    continue
                errs = problems(text, spans)
                if not errs:
                    break
                last = errs
                key = re.sub(r"'.*", "", errs[0])[:70]
                rejects.setdefault(fn.__name__, {}).setdefault(key, 0)
                rejects[fn.__name__][key] += 1
            else:
                raise SystemExit(f"{fn.__name__}: no clean record after 400 draws; last problems: {last}\n{text!r}")
            records.append((kind, text, spans))
    R.shuffle(records)

    # final self-check over everything that will be printed
    errors = []
    per_type = {t: 0 for t in TYPES}
    per_kind = {}
    negatives = 0
    for i, (kind, text, spans) in enumerate(records):
        for e in problems(text, spans):
            errors.append(f"record {i} ({kind}): {e}")
        for _, _, t in spans:
            per_type[t] += 1
        per_kind[kind] = per_kind.get(kind, 0) + 1
        negatives += not spans
    for t, n in per_type.items():
        if n < 200:
            errors.append(f"only {n} positives of type {t}")
    if negatives < 1200:
        errors.append(f"only {negatives} negatives")
    if len(records) < 3500:
        errors.append(f"only {len(records)} records")
    lines = [json.dumps({"kind": k, "line": text, "pii": [{"start": s, "end": e, "type": t} for s, e, t in spans]})
             for k, text, spans in records]
    for line, (k, text, spans) in zip(lines, records):
        back = json.loads(line)
        if not line.isascii() or back["line"] != text or "\n" in line:
            errors.append(f"JSON round trip failed for {text[:60]!r}")
    size = sum(len(x) + 1 for x in lines)
    if size > 2_000_000:
        errors.append(f"output is {size} bytes")
    if stats:
        kb = {}
        for (k, text, _), line in zip(records, lines):
            kb[k] = kb.get(k, 0) + len(line) + 1
        sys.stderr.write("bytes per kind: " + json.dumps(kb, sort_keys=True) + "\n")
        sys.stderr.write(f"records {len(records)}, negatives {negatives}, bytes {size}\n")
        sys.stderr.write("per kind: " + json.dumps(per_kind, sort_keys=True) + "\n")
        sys.stderr.write("per type: " + json.dumps(per_type) + "\n")
        for name, d in sorted(rejects.items()):
            sys.stderr.write(f"redraws {name}: " + json.dumps(d) + "\n")
    if errors:
        sys.stderr.write("self-check failed:\n" + "\n".join(errors[:50]) + "\n")
        raise SystemExit(1)
    if stats:
        return
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
