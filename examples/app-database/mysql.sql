-- The app table Resound reads with `[app_database] url = "mysql://…"` (MySQL 8, MariaDB 10.5+).
-- One row per app. `settings` holds any other per-app setting of `[[apps]]`, under the same
-- names, as a JSON object (NULL or '{}' for the defaults), for example
--   '{"max_connections": 1000, "enable_client_messages": true,
--     "webhooks": [{"url": "https://example.com/pusher/webhooks"}]}'
CREATE TABLE IF NOT EXISTS resound_apps (
    id         VARCHAR(64)  NOT NULL PRIMARY KEY,
    app_key    VARCHAR(255) NOT NULL UNIQUE,
    secret     VARCHAR(255) NOT NULL,
    enabled    BOOLEAN      NOT NULL DEFAULT TRUE,
    settings   TEXT,
    updated_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
);
