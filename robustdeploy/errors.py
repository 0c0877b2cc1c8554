"""User-facing errors: one line that names the problem and the fix."""


class RobustDeployError(Exception):
    """An error the user caused and can fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


class CheckFailed(RobustDeployError):
    """A measured quantity broke a tolerance the user set (parity, CI gate)."""

    exit_code = 1
