from django.contrib import admin

from streams.models import LiveSession, Recording

admin.site.register(LiveSession)
admin.site.register(Recording)
