"""A FastAPI application served by uvicorn in the tests (``orders_app``)."""
