"""Typed errors at the broker boundary."""


class QueueError(Exception):
    """Base for broker-side failures the service reports or retries."""


class BrokerAuthError(QueueError):
    """The broker refused our credentials; retrying will not help, so start-up fails."""


class BrokerUnavailable(QueueError):
    """The broker cannot be reached right now; callers back off and retry."""


class JobTooLarge(QueueError):
    """A producer tried to enqueue a job over max_job_bytes."""
