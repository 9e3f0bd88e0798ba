from django.shortcuts import render

from .models import Item

# Rows per page.
ROWS = 20


def newest():
    return Item.objects.order_by("-created")[:ROWS]


def items(request):
    """The WSGI page: one query through the ORM, then the template."""
    rows = list(newest())
    return render(request, "realistic/items.html", {"items": rows, "title": "Newest items"})


async def items_async(request):
    """The ASGI page: the same query through Django's async ORM interface (`async for`, which
    Django's documentation gives for async views; it runs the query with sync_to_async under
    the hood), then the same template. Rendering does no I/O, so it runs on the event loop."""
    rows = [item async for item in newest()]
    return render(request, "realistic/items.html", {"items": rows, "title": "Newest items"})
