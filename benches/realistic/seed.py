"""Creates the table and fills it: `python -m benches.realistic.seed [ROWS]` with the
environment of settings.py. The rows are the same in every run (seeded)."""

import datetime
import decimal
import os
import random
import sys

WORDS = (
    "amber basalt cedar delta ember fjord granite harbor indigo juniper kestrel lantern meadow "
    "nickel orchard pewter quartz russet saffron timber umber velvet willow xenon yarrow zephyr"
).split()
CATEGORIES = ("books", "garden", "kitchen", "music", "outdoor", "tools", "toys")


def main(rows: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benches.realistic.settings")
    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    from benches.realistic.models import Item

    # No migrations: the app's table is created by --run-syncdb.
    call_command("migrate", run_syncdb=True, verbosity=0)
    rng = random.Random(12)
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    Item.objects.all().delete()
    Item.objects.bulk_create(
        (
            Item(
                name=" ".join(rng.sample(WORDS, 2)),
                category=rng.choice(CATEGORIES),
                description=" ".join(rng.choices(WORDS, k=30)),
                price=decimal.Decimal(rng.randrange(100, 100_000)) / 100,
                stock=rng.randrange(0, 50),
                created=start + datetime.timedelta(minutes=7 * n),
            )
            for n in range(rows)
        ),
        batch_size=1000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
