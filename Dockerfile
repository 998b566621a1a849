# One image for web, worker and beat (docker-compose.yml picks the command).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 EPHEMERA_VAR_DIR=/var/lib/ephemera
# The sandbox runs user handlers under the distribution's own /usr/bin/python3 (stdlib only, never the app's venv);
# nftables holds the network-enabled functions' egress policy, e2fsprogs makes their /tmp filesystems.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 bubblewrap nftables e2fsprogs \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN mkdir -p /var/lib/ephemera && python manage.py collectstatic --noinput

EXPOSE 8000
CMD ["gunicorn", "-c", "console/gunicorn_conf.py"]
