"""Date and time tools with IANA time zones (``zoneinfo``): the current time, and converting a time.

Load with ``glm-agent tools tools/clock.py``. The model is told the zone names
it may use by example; an unknown zone comes back as an error naming the fix.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from glm_agent import tool

__all__ = ["current_time", "convert_time"]


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC', 'Asia/Shanghai' or 'America/New_York'"
        ) from None


def _describe(moment: dt.datetime) -> dict[str, str]:
    return {
        "time_zone": str(moment.tzinfo),
        "iso": moment.isoformat(timespec="seconds"),
        "date": moment.date().isoformat(),
        "time": moment.strftime("%H:%M:%S"),
        "weekday": moment.strftime("%A"),
        "utc_offset": moment.strftime("%z"),
    }


@tool
def current_time(
    time_zone: Annotated[str, "IANA time zone name, e.g. 'Asia/Shanghai', 'Europe/Berlin' or 'UTC'"] = "UTC",
) -> dict[str, str]:
    """Get the current date and time in a time zone."""
    return _describe(dt.datetime.now(_zone(time_zone)))


@tool
def convert_time(
    time: Annotated[str, "Local date and time in ISO format, e.g. '2024-05-01T09:30'"],
    from_zone: Annotated[str, "IANA time zone of the given time, e.g. 'Asia/Shanghai'"],
    to_zone: Annotated[str, "IANA time zone to convert to, e.g. 'America/New_York'"],
) -> dict[str, str]:
    """Convert a local date and time from one time zone to another."""
    try:
        moment = dt.datetime.fromisoformat(time.strip())
    except ValueError:
        raise ValueError(f"cannot read {time!r} as a date and time; use ISO format like '2024-05-01T09:30'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(from_zone))
    else:
        moment = moment.astimezone(_zone(from_zone))
    return _describe(moment.astimezone(_zone(to_zone)))
