"""Small helpers shared by the store tests (imported, not fixtures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qanat.portal import PasswordHasher

BASE_URL = "https://gw.example.test"
#: Cheap scrypt cost so that tests with many logins stay fast.
TEST_HASHER = PasswordHasher(log2_n=8)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now
