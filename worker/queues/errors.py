"""Typed errors at the broker boundary."""

import ssl


class QueueError(Exception):
    """Base for broker-side failures the service reports or retries."""


class BrokerAuthError(QueueError):
    """The broker refused our credentials; retrying will not help, so start-up fails."""


class BrokerTLSError(BrokerAuthError):
    """TLS could not be set up: the broker's certificate is not trusted, ours is refused, or the
    certificate files cannot be read. Configuration, not weather: start-up fails at once."""


class BrokerUnavailable(QueueError):
    """The broker cannot be reached right now; callers back off and retry."""


class JobTooLarge(QueueError):
    """A producer tried to enqueue a job over max_job_bytes."""


def error_behind(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of `kind` in `exc`'s chain, `exc` included: client libraries wrap the
    socket or TLS error that says what went wrong and keep only its message."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    return seen


def tls_failure(where: str, reason: BaseException, ca_file: str | None, ca_setting: str
                ) -> BrokerTLSError:
    """`where`: e.g. "Redis at 127.0.0.1:6380"; `ca_setting`: e.g. "redis.ssl_ca_certs"."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        trusted = ca_file or "the system CA store"
        return BrokerTLSError(
            f"{where}: TLS certificate verification failed against {trusted} ({ca_setting}): "
            f"{reason}"
        )
    # With TLS 1.3 the server judges our certificate after the handshake, so a missing or refused
    # client certificate shows up as an alert, a reset or a closed connection on the first read.
    prefix = ca_setting.partition(".")[0]
    return BrokerTLSError(
        f"{where} ended the TLS session: {reason!r}. If it requires client certificates, set "
        f"{prefix}.ssl_certfile and {prefix}.ssl_keyfile to a certificate its CA signed; check "
        "too that it speaks TLS on that port"
    )
