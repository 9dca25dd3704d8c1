"""Optional features whose packages come with an extra ([project.optional-dependencies])."""


class MissingExtra(ImportError):
    """A feature was asked for whose packages are not installed; the message names the extra."""

    def __init__(self, feature: str, extra: str, cause: ImportError) -> None:
        super().__init__(
            f"{feature} needs the {extra!r} extra, which is not installed ({cause}): "
            f"pip install 'llm-worker[{extra}]'"
        )
        self.extra = extra
