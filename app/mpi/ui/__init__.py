"""The data steward's pages (``/ui/``): the review queue, a review with its match-weight
chart, persons, search and the model, server-rendered over the same services as the API."""
