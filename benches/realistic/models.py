from django.db import models


class Item(models.Model):
    """A catalogue entry; the page lists the 20 newest."""

    name = models.CharField(max_length=100)
    category = models.CharField(max_length=40)
    description = models.TextField()
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField()
    created = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.name
