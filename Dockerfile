# One image for every Closed Loop server; the command picks which one runs:
#   python -m services.leads | services.bookings | services.messaging | gateway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CRM_BIND_HOST=0.0.0.0 \
    CRM_DATA_DIR=/var/lib/closed-loop

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos protos
COPY services services
COPY gateway gateway
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/closed-loop --create-home closed-loop

USER closed-loop
EXPOSE 50051 50052 50053 8080 9100
CMD ["python", "-m", "services.leads"]
