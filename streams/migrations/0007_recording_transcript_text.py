"""Transcript search: ``Recording.transcript_text`` (the redacted cues' text without
their masks), filled for existing recordings, and on PostgreSQL a GIN index over its
English tsvector (the expression ``streams.selectors.recording_search`` filters on).
SQLite gets no index: its search is a plain case-insensitive scan."""

import re

from django.db import migrations, models

_MASK = re.compile(r"\[[^\]]*\]")
INDEX = "streams_recording_transcript_fts"


def fill_text(apps, schema_editor):
    Recording = apps.get_model("streams", "Recording")
    for recording in Recording.objects.exclude(transcript=[]).only("id", "transcript"):
        cues = recording.transcript if isinstance(recording.transcript, list) else []
        lines = (
            " ".join(_MASK.sub(" ", str(cue.get("text", ""))).split())
            for cue in cues
            if isinstance(cue, dict)
        )
        text = "\n".join(line for line in lines if line)
        Recording.objects.filter(id=recording.id).update(transcript_text=text)


def index_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON streams_recording "
            "USING GIN (to_tsvector('english'::regconfig, transcript_text))"
        )


def index_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("streams", "0006_recording_video_upload"),
    ]

    operations = [
        migrations.AddField(
            model_name="recording",
            name="transcript_text",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.RunPython(fill_text, migrations.RunPython.noop),
        migrations.RunPython(index_create, index_drop),
    ]
