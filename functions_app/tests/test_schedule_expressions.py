"""Schedule expressions, EventBridge's syntax: parsed with precise errors, and their fire times in a time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from functions_app.schedule_expressions import InvalidExpression, expression_parse, fire_count, fire_times, next_fire

pytestmark = pytest.mark.backend_free

# A Wednesday.
NOW = datetime(2026, 11, 25, 10, 7, 30, tzinfo=UTC)


def times(expression: str, zone: str = "UTC", after: datetime = NOW, count: int = 5) -> list[str]:
    moments = fire_times(expression_parse(expression), zone=zone, anchor=after, after=after, count=count)
    return [moment.strftime("%Y-%m-%d %H:%M %a") for moment in moments]


def test_a_rate_fires_every_period_from_its_anchor():
    anchor = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    rate = expression_parse("rate(5 minutes)")
    assert next_fire(rate, zone="UTC", anchor=anchor, after=anchor) == anchor + timedelta(minutes=5)
    assert next_fire(rate, zone="UTC", anchor=anchor, after=NOW) == anchor + timedelta(minutes=10)
    assert times("rate(1 day)", count=2) == ["2026-11-26 10:07 Thu", "2026-11-27 10:07 Fri"]


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("rate(1 minutes)", "write rate(1 minute)"),
        ("rate(5 minute)", "write rate(5 minutes)"),
        ("rate(0 minutes)", "at least 1"),
        ("rate(5 weeks)", "minute(s), hour(s) or day(s)"),
        ("cron(0 12 * * *)", "6 fields"),
        ("cron(0 12 * * * *)", "Exactly one of day-of-month and day-of-week must be ?"),
        ("cron(0 12 ? * ? *)", "Exactly one of day-of-month and day-of-week must be ?"),
        ("cron(60 12 * * ? *)", "minutes: 60 is out of range 0-59"),
        ("cron(0 24 * * ? *)", "hours: 24 is out of range 0-23"),
        ("cron(0 12 ? * 8 *)", "day-of-week: 8 is out of range 1-7 or SUN-SAT"),
        ("cron(0 12 ? * MON-FRX *)", "day-of-week: 'FRX' is not a value here"),
        ("cron(0 12 * 13 ? *)", "month: 13 is out of range 1-12 or JAN-DEC"),
        ("cron(0 12 5-1 * ? *)", "day-of-month: the range 5-1 runs backwards"),
        ("cron(0 12 ? * 2#6 *)", "the week after # is 1-5"),
        ("cron(0 12 1,L * ? *)", "L, LW and nW (e.g. 15W) stand alone"),
        ("cron(0 12 * * ? 1969)", "year: 1969 is out of range 1970-2199"),
        ("at(2027-02-30T10:00:00)", "at(2027-02-30T10:00:00): not a date and time of the calendar"),
        ("at(2027-2-3T10:00:00)", "at(yyyy-mm-ddThh:mm:ss)"),
        ("every(5 minutes)", "rate(…), cron(…) or at(…)"),
        # Other scripts' digits are digits to Python, not to the syntax (and int("²") fails).
        ("rate(\u00b2 minutes)", "a whole number"),
        ("rate(\u0663 minutes)", "a whole number"),
        ("cron(\u00b2 12 * * ? *)", "minutes: '\u00b2' is not a value here"),
        ("cron(0 12 \u0663W * ? *)", "day-of-month"),
        ("cron(0 12 ? * \u0663#1 *)", "day-of-week"),
        ("at(\u0662\u0660\u0662\u0667-01-01T00:00:00)", "at(yyyy-mm-ddThh:mm:ss)"),
        # Periods and years the calendar cannot hold are refused, not overflowed.
        ("rate(99999999999999999999 days)", "at most 3650 days"),
        ("rate(3651 days)", "at most 3650 days"),
        ("at(9999-12-31T23:59:59)", "the year is 1970-2199"),
        ("at(0001-01-01T00:00:00)", "the year is 1970-2199"),
        ("rate(" + "1" * 300 + " minutes)", "at most 256 characters"),
    ],
)
def test_an_invalid_expression_gets_the_precise_reason(expression, reason):
    with pytest.raises(InvalidExpression) as refused:
        expression_parse(expression)
    assert reason in str(refused.value)


def test_cron_fields_take_lists_ranges_steps_and_names():
    assert times("cron(0/15 * * * ? *)", count=3) == [
        "2026-11-25 10:15 Wed",
        "2026-11-25 10:30 Wed",
        "2026-11-25 10:45 Wed",
    ]
    assert times("cron(0 18 ? * MON-FRI *)", count=3) == [
        "2026-11-25 18:00 Wed",
        "2026-11-26 18:00 Thu",
        "2026-11-27 18:00 Fri",
    ]
    # Day-of-week digits are 1-7 = SUN-SAT: 2-6 is MON-FRI, and 1,7 the weekend.
    assert times("cron(15 10 ? * 1,7 *)", count=2) == ["2026-11-28 10:15 Sat", "2026-11-29 10:15 Sun"]
    assert times("cron(0 9 1 JAN,JUL ? 2027-2028)", count=5) == [
        "2027-01-01 09:00 Fri",
        "2027-07-01 09:00 Thu",
        "2028-01-01 09:00 Sat",
        "2028-07-01 09:00 Sat",
    ]


def test_l_w_and_hash_pick_the_days_quartz_and_eventbridge_mean():
    assert times("cron(0 0 L * ? *)", count=3) == [
        "2026-11-30 00:00 Mon",
        "2026-12-31 00:00 Thu",
        "2027-01-31 00:00 Sun",
    ]
    # The weekday nearest the 1st of Aug 2026 (a Saturday) is Monday the 3rd: W never leaves the month.
    assert times("cron(0 0 1W 8 ? *)", after=datetime(2026, 7, 1, tzinfo=UTC), count=1) == ["2026-08-03 00:00 Mon"]
    # Nov 15 2026 is a Sunday: the nearest weekday is Monday the 16th.
    assert times("cron(0 0 15W * ? *)", after=datetime(2026, 11, 1, tzinfo=UTC), count=1) == ["2026-11-16 00:00 Mon"]
    # The last day of Jan 2027 is a Sunday: LW is Friday the 29th.
    assert times("cron(0 0 LW * ? *)", after=datetime(2027, 1, 1, tzinfo=UTC), count=1) == ["2027-01-29 00:00 Fri"]
    assert times("cron(0 0 ? * 6L *)", count=2) == ["2026-11-27 00:00 Fri", "2026-12-25 00:00 Fri"]
    assert times("cron(0 0 ? * 2#1 *)", count=2) == ["2026-12-07 00:00 Mon", "2027-01-04 00:00 Mon"]
    assert times("cron(0 0 ? * L *)", count=1) == ["2026-11-28 00:00 Sat"]


def test_cron_runs_in_its_time_zone_across_daylight_saving_changes():
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer.
    assert times("cron(0 9 ? * MON *)", zone="America/New_York", count=1) == ["2026-11-30 14:00 Mon"]
    spring = datetime(2027, 3, 13, tzinfo=UTC)
    # 02:30 does not exist on 14 March 2027 in New York: that day is skipped, not moved.
    assert times("cron(30 2 * * ? *)", zone="America/New_York", after=spring, count=2) == [
        "2027-03-13 07:30 Sat",
        "2027-03-15 06:30 Mon",
    ]
    autumn = datetime(2027, 11, 6, 12, tzinfo=UTC)
    # 01:30 happens twice on 7 November 2027: it fires once, at the first.
    assert times("cron(30 1 * * ? *)", zone="America/New_York", after=autumn, count=2) == [
        "2027-11-07 05:30 Sun",
        "2027-11-08 06:30 Mon",
    ]


def test_at_fires_once_in_its_zone_and_never_when_past():
    once = expression_parse("at(2026-12-24T18:00:00)")
    assert fire_times(once, zone="Europe/Paris", anchor=NOW, after=NOW, count=3) == [
        datetime(2026, 12, 24, 17, 0, tzinfo=UTC)
    ]
    assert next_fire(once, zone="Europe/Paris", anchor=NOW, after=datetime(2027, 1, 1, tzinfo=UTC)) is None


def test_a_cron_past_its_last_year_has_no_next_fire():
    assert next_fire(expression_parse("cron(0 0 1 1 ? 2026)"), zone="UTC", anchor=NOW, after=NOW) is None


def test_ticks_in_a_span_are_counted_by_arithmetic_for_a_rate_and_one_walk_for_a_cron():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    year_later = start + timedelta(days=365)
    every_minute = expression_parse("rate(1 minute)")
    anchor = start - timedelta(minutes=1)
    count = fire_count(every_minute, zone="UTC", anchor=anchor, first=start, last=year_later, limit=10**9)
    assert count == 365 * 24 * 60 + 1
    weekdays_at_nine = expression_parse("cron(0 9 ? * MON-FRI *)")
    assert fire_count(weekdays_at_nine, zone="UTC", anchor=start, first=start, last=year_later, limit=10**6) == 261
    assert fire_count(weekdays_at_nine, zone="UTC", anchor=start, first=start, last=year_later, limit=10) == 10
