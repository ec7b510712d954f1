"""The test project's URLs (``ROOT_URLCONF``)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("shop/orders/", views.place_order),
    path("shop/checkout/", views.checkout),
]
