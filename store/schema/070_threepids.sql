-- Third-party identifiers (client-server-api "Adding Account Administrative Contact
-- Information"): the 3PIDs a user bound to their Matrix ID through this homeserver
-- (POST /account/3pid/bind), one row per identity server they were bound on.  The identity
-- server checked the validation; these rows let GET /account/3pid list them and let
-- /account/3pid/unbind, /delete and deactivation unbind them from the right server later
-- ("Homeservers should track successful binds so they can be unbound later").
CREATE TABLE user_threepids (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    id_server TEXT NOT NULL,
    validated_at BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, medium, address, id_server)
);
