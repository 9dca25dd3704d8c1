"""Exact regexes for the string formats whose xgrammar rules are looser than the format.

xgrammar 0.2.9's `date` accepts 2024-02-30 and year 0000, and its `ipv4` accepts leading zeros
(01.2.3.4), which Python's `date.fromisoformat` and `ipaddress` (jsonschema's format checks)
refuse. These patterns replace such a `format` with a `pattern` that admits only valid values:
days per month, leap years by the Gregorian rule, no leading zeros; times as RFC 3339 writes
them, with an offset and without the leap second 60 (which Python's datetime refuses).
"""

_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"  # 0001-9999
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
# Divisible by 4 and not by 100 (last two digits), or divisible by 400 (first two, then 00).
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_HOUR_MINUTE = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_TIME = rf"{_HOUR_MINUTE}:[0-5][0-9](?:\.[0-9]{{1,9}})?(?:Z|[+-]{_HOUR_MINUTE})"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"

EXACT_FORMAT_PATTERNS = {
    "date": rf"^{_DATE}$",
    "date-time": rf"^{_DATE}T{_TIME}$",
    "time": rf"^{_TIME}$",
    "ipv4": rf"^{_OCTET}(?:\.{_OCTET}){{3}}$",
}

# Formats xgrammar 0.2.9 accepts but does not check, and that a validator may check: a schema
# that names one is refused rather than served with outputs that could fail it. Any other format
# is either enforced by xgrammar (email, uuid, ipv6, time, uri, hostname, ...) or an annotation
# that validators ignore.
UNENFORCED_FORMATS = frozenset({"idn-email", "idn-hostname", "iri", "iri-reference", "regex"})
