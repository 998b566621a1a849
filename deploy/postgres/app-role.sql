-- The application's own role: it owns the platform's database and schema and nothing else, and is not a superuser,
-- so whatever reaches the database with the application's credentials cannot read the server's files or run
-- programs on its host. psql variables: app_role, app_password, app_database.
CREATE ROLE :"app_role" LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
ALTER DATABASE :"app_database" OWNER TO :"app_role";
\connect :"app_database"
ALTER SCHEMA public OWNER TO :"app_role";
