"""Background tasks (Django's Tasks API, django-tasks with its database backend).

Run by ``manage.py db_worker`` (started by ``bash .ci/dev run``); enqueued after the
row they work on commits.
"""

from __future__ import annotations

from django_tasks import task


@task()
def upload_process_task(job_id: int) -> str:
    """Process upload job ``job_id`` into a recording
    (:func:`streams.services.upload_process`); returns the job's final status."""
    from streams.services import upload_process

    job = upload_process(job_id=job_id)
    return job.status if job is not None else "skipped"
