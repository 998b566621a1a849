"""Schedule expressions as EventBridge (Scheduler) writes them, parsed and evaluated: pure functions, no Django.

- ``rate(<n> <unit>)``: unit minute|minutes|hour|hours|day|days, the singular for 1 and the plural otherwise;
  fires every n units from the schedule's anchor (its creation, or the moment it was last enabled or changed).
- ``cron(minutes hours day-of-month month day-of-week year)``: six fields in the schedule's time zone;
  day-of-week 1-7 = SUN-SAT; exactly one of the two day fields is ``?``; wildcards ``, - * / ? L W #``.
- ``at(yyyy-mm-ddThh:mm:ss)``: once, at that wall-clock time in the schedule's time zone.

Wall-clock times a daylight-saving change skips do not fire; those it repeats fire once, at the first.
docs/event-sources.md has the rules and examples.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

MONTHS = {name: number for number, name in enumerate(calendar.month_abbr) if name}
MONTHS = {name.upper(): number for name, number in MONTHS.items()}
WEEKDAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
YEAR_MIN, YEAR_MAX = 1970, 2199
RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
RATE_MAX_S = 3650 * 86400  # ten years: longer periods are a typo, and would overflow the calendar
EXPRESSION_MAX_CHARS = 256


class InvalidExpression(ValueError):
    """The expression is not valid; the message says where and why."""


@dataclass(frozen=True)
class Rate:
    seconds: int


@dataclass(frozen=True)
class At:
    moment: datetime  # naive: a wall-clock time in the schedule's zone


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    years: frozenset[int]
    days: DaySpec  # day-of-month or day-of-week, whichever is not "?"


Expression = Rate | At | Cron


@functools.lru_cache(maxsize=4096)
def expression_parse(text: str) -> Expression:
    """The expression, or InvalidExpression with the precise reason (remembered: schedules fire the same few)."""
    if len(text or "") > EXPRESSION_MAX_CHARS:
        raise InvalidExpression(f"An expression is at most {EXPRESSION_MAX_CHARS} characters.")
    match = re.fullmatch(r"\s*(rate|cron|at)\((.*)\)\s*", text or "")
    if match is None:
        raise InvalidExpression("An expression is rate(…), cron(…) or at(…).")
    kind, body = match.groups()
    if kind == "rate":
        return _rate(body.strip())
    if kind == "at":
        return _at(body.strip())
    return _cron(body.split())


def _rate(body: str) -> Rate:
    match = re.fullmatch(r"([0-9]+) (minute|minutes|hour|hours|day|days)", body)
    if match is None:
        raise InvalidExpression("rate(<n> <unit>): a whole number, a space, then minute(s), hour(s) or day(s).")
    value, unit = int(match.group(1)), match.group(2)
    if value < 1:
        raise InvalidExpression("rate(…) needs a value of at least 1.")
    if (value == 1) != (not unit.endswith("s")):
        wanted = unit.rstrip("s") if value == 1 else unit.rstrip("s") + "s"
        raise InvalidExpression(f"rate({value} {unit}): write rate({value} {wanted}) (singular for 1, else plural).")
    seconds = value * RATE_UNITS[unit.rstrip("s")]
    if seconds > RATE_MAX_S:
        raise InvalidExpression(f"rate(…) is at most {RATE_MAX_S // 86400} days.")
    return Rate(seconds)


def _at(body: str) -> At:
    # strptime takes other scripts' digits and one-digit fields; at() is written in ASCII, zero-padded.
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}", body):
        raise InvalidExpression("at(yyyy-mm-ddThh:mm:ss), e.g. at(2027-01-31T09:30:00).")
    try:
        moment = datetime.strptime(body, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise InvalidExpression(f"at({body}): not a date and time of the calendar.") from None
    if not YEAR_MIN <= moment.year <= YEAR_MAX:
        raise InvalidExpression(f"at(…): the year is {YEAR_MIN}-{YEAR_MAX}.")
    return At(moment)


FIELD_NAMES = ("minutes", "hours", "day-of-month", "month", "day-of-week", "year")


def _cron(fields: list[str]) -> Cron:
    if len(fields) != 6:
        raise InvalidExpression(
            f"cron(…) has 6 fields (minutes hours day-of-month month day-of-week year), not {len(fields)}."
        )
    minutes, hours, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise InvalidExpression("Exactly one of day-of-month and day-of-week must be ?: e.g. cron(0 12 * * ? *).")
    days: DaySpec = DayOfWeek.parse(dow) if dom == "?" else DayOfMonth.parse(dom)
    return Cron(
        minutes=_values(minutes, "minutes", 0, 59),
        hours=_values(hours, "hours", 0, 23),
        months=_values(month, "month", 1, 12, MONTHS),
        years=_values(year, "year", YEAR_MIN, YEAR_MAX),
        days=days,
    )


def _values(text: str, field: str, low: int, high: int, names: dict[str, int] | None = None) -> frozenset[int]:
    """A field's values: a comma list of ``*``, ``n``, ``a-b``, each optionally ``/step``."""
    values: set[int] = set()
    for item in text.split(","):
        values |= _item(item, field, low, high, names or {})
    return frozenset(values)


def _item(item: str, field: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    base, _, step_text = item.partition("/")
    step = _number(step_text, field, 1, high - low + 1, names={}) if step_text else 1
    if base == "*":
        start, end = low, high
    elif "-" in base:
        first, _, last = base.partition("-")
        start, end = _number(first, field, low, high, names), _number(last, field, low, high, names)
        if end < start:
            raise InvalidExpression(f"{field}: the range {base} runs backwards.")
    else:
        start = _number(base, field, low, high, names)
        end = high if step_text else start
    return set(range(start, end + 1, step))


def _number(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not (text.isascii() and text.isdigit()):  # "²".isdigit() holds, and int("²") fails
        raise InvalidExpression(f"{field}: {text!r} is not a value here ({low}-{high}{_named(names)}).")
    value = int(text)
    if not low <= value <= high:
        raise InvalidExpression(f"{field}: {value} is out of range {low}-{high}{_named(names)}.")
    return value


def _named(names: dict[str, int]) -> str:
    return f" or {min(names, key=names.__getitem__)}-{max(names, key=names.__getitem__)}" if names else ""


@dataclass(frozen=True)
class DayOfMonth:
    days: frozenset[int]
    last: bool = False  # L
    last_weekday: bool = False  # LW
    nearest_weekday: frozenset[int] = frozenset()  # 15W

    @classmethod
    def parse(cls, text: str) -> DayOfMonth:
        if text == "L":
            return cls(frozenset(), last=True)
        if text == "LW":
            return cls(frozenset(), last_weekday=True)
        if re.fullmatch(r"[0-9]+W", text):
            return cls(frozenset(), nearest_weekday=frozenset({_number(text[:-1], "day-of-month", 1, 31, {})}))
        if "L" in text or "W" in text:
            raise InvalidExpression(f"day-of-month: {text!r}: L, LW and nW (e.g. 15W) stand alone.")
        return cls(_values(text, "day-of-month", 1, 31))

    def matches(self, day: date) -> bool:
        length = calendar.monthrange(day.year, day.month)[1]
        if self.last:
            return day.day == length
        if self.last_weekday:
            return day == _weekday_nearest(day.year, day.month, length, length)
        if self.nearest_weekday:
            (wanted,) = self.nearest_weekday
            return wanted <= length and day == _weekday_nearest(day.year, day.month, wanted, length)
        return day.day in self.days


def _weekday_nearest(year: int, month: int, wanted: int, length: int) -> date:
    """The weekday (MON-FRI) nearest to the ``wanted`` day, within its month (Quartz's W)."""
    day = date(year, month, wanted)
    if day.weekday() == 5:  # Saturday: Friday, or the Monday after when the 1st is a Saturday
        return day - timedelta(days=1) if wanted > 1 else day + timedelta(days=2)
    if day.weekday() == 6:  # Sunday: Monday, or the Friday before when it is the month's last day
        return day + timedelta(days=1) if wanted < length else day - timedelta(days=2)
    return day


@dataclass(frozen=True)
class DayOfWeek:
    weekdays: frozenset[int]  # 1-7 = SUN-SAT
    last_of: int = 0  # 6L: the month's last Friday
    nth: tuple[int, int] = (0, 0)  # 2#3: the month's third Monday

    @classmethod
    def parse(cls, text: str) -> DayOfWeek:
        if text == "L":
            return cls(frozenset({7}))
        if match := re.fullmatch(r"([0-9A-Za-z]+)L", text):
            return cls(frozenset(), last_of=_number(match.group(1), "day-of-week", 1, 7, WEEKDAYS))
        if match := re.fullmatch(r"([0-9A-Za-z]+)#([0-9])", text):
            weekday = _number(match.group(1), "day-of-week", 1, 7, WEEKDAYS)
            which = int(match.group(2))
            if not 1 <= which <= 5:
                raise InvalidExpression(f"day-of-week: {text!r}: the week after # is 1-5.")
            return cls(frozenset(), nth=(weekday, which))
        if "L" in text.upper() or "#" in text:  # no day's name has an L
            raise InvalidExpression(f"day-of-week: {text!r}: L (or nL) and n#k stand alone.")
        return cls(_values(text, "day-of-week", 1, 7, WEEKDAYS))

    def matches(self, day: date) -> bool:
        weekday = (day.isoweekday() % 7) + 1  # Monday (1) → 2 … Sunday (7) → 1
        if self.last_of:
            return weekday == self.last_of and day.day + 7 > calendar.monthrange(day.year, day.month)[1]
        if self.nth != (0, 0):
            wanted, which = self.nth
            return weekday == wanted and (day.day - 1) // 7 + 1 == which
        return weekday in self.weekdays


DaySpec = DayOfMonth | DayOfWeek


# ---- evaluation -------------------------------------------------------------------------------------------------


def fire_times(
    expression: Expression, *, zone: str, anchor: datetime, after: datetime, count: int = 10
) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after`` (aware; UTC out). ``anchor`` starts a rate."""
    times: list[datetime] = []
    for moment in _fire_iter(expression, ZoneInfo(zone), anchor, after):
        times.append(moment)
        if len(times) == count:
            break
    return times


def next_fire(expression: Expression, *, zone: str, anchor: datetime, after: datetime) -> datetime | None:
    """The first fire time strictly after ``after``, or None when there is none (an ``at`` past, a cron's last
    year gone)."""
    return next(_fire_iter(expression, ZoneInfo(zone), anchor, after), None)


def fire_count(
    expression: Expression, *, zone: str, anchor: datetime, first: datetime, last: datetime, limit: int
) -> int:
    """How many fire times lie from ``first`` to ``last`` (both included), counting up to ``limit``."""
    before_first = first - timedelta(microseconds=1)
    if isinstance(expression, Rate):  # arithmetic: a year of a one-minute rate is half a million ticks
        start = next_fire(expression, zone=zone, anchor=anchor, after=before_first)
        if start is None or start > last:
            return 0
        return min((last - start) // timedelta(seconds=expression.seconds) + 1, limit)
    count = 0
    for moment in _fire_iter(expression, ZoneInfo(zone), anchor, before_first):
        if moment > last or count == limit:
            break
        count += 1
    return count


def _fire_iter(expression: Expression, zone: ZoneInfo, anchor: datetime, after: datetime) -> Iterator[datetime]:
    if isinstance(expression, Rate):
        period = timedelta(seconds=expression.seconds)
        # The first multiple of the period past ``after``, counted from the anchor.
        steps = max((after - anchor) // period + 1, 1)
        moment = anchor + steps * period
        while True:
            yield moment.astimezone(UTC)
            moment += period
    elif isinstance(expression, At):
        once = _wall_to_utc(expression.moment, zone)
        if once is not None and once > after:
            yield once
    else:
        yield from _cron_iter(expression, zone, after)


def _cron_iter(cron: Cron, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    local = after.astimezone(zone)
    start = local.date()
    for year in sorted(y for y in cron.years if y >= start.year):
        for month in sorted(cron.months):
            if (year, month) < (start.year, start.month):
                continue
            first = start.day if (year, month) == (start.year, start.month) else 1
            for day_number in range(first, calendar.monthrange(year, month)[1] + 1):
                day = date(year, month, day_number)
                if not cron.days.matches(day):
                    continue
                # On the first day, only from the wall-clock hour and minute of ``after`` on (the rest is past).
                today = day == start
                for hour in sorted(h for h in cron.hours if not today or h >= local.hour):
                    for minute in sorted(
                        m for m in cron.minutes if not today or hour > local.hour or m >= local.minute
                    ):
                        moment = _wall_to_utc(datetime.combine(day, time(hour, minute)), zone)
                        if moment is not None and moment > after:
                            yield moment


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """A wall-clock time in ``zone`` as UTC: None when daylight saving skips it; the first when it repeats."""
    moment = wall.replace(tzinfo=zone, fold=0)
    utc = moment.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return utc
