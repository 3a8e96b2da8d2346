from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from users.models import FriendRequest, Friendship, PresenceConnection, User

admin.site.register(User, UserAdmin)
admin.site.register(FriendRequest)
admin.site.register(Friendship)
admin.site.register(PresenceConnection)
