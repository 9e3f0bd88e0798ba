from django.urls import path

from . import views

urlpatterns = [
    path("items", views.items),
    path("items-async", views.items_async),
]
