-- +goose Up
-- The booking domain's tables, in its schema (booking by default). Only the
-- applier writes here, one show's events in the show's order; every time is
-- a record time (an event's, or one plus a ttl), never the wall clock, so a
-- rebuild from the topic writes the same rows.

-- A show, created by ShowCreated at created_at.
CREATE TABLE shows (
    show_id    text        PRIMARY KEY,
    seat_count integer     NOT NULL CHECK (seat_count > 0),
    created_at timestamptz NOT NULL
);

-- A show's seats, each free, held (by hold_id until held_until) or booked (by
-- hold_id). A held seat whose held_until has passed is free to the next
-- event of the show recorded after it; the hold is marked expired then.
CREATE TABLE seats (
    show_id    text        NOT NULL REFERENCES shows,
    seat       text        NOT NULL,
    position   integer     NOT NULL,
    state      text        NOT NULL CHECK (state IN ('free', 'held', 'booked')),
    hold_id    text,
    held_until timestamptz,
    PRIMARY KEY (show_id, seat),
    UNIQUE (show_id, position),
    CHECK ((state = 'free') = (hold_id IS NULL)),
    CHECK ((state = 'held') = (held_until IS NOT NULL))
);
CREATE INDEX seats_hold ON seats (show_id, hold_id) WHERE hold_id IS NOT NULL;

-- Every hold a SeatsHeld asked for with a new hold_id: held (until
-- expires_at), then confirmed, released or expired (decided_at: the record
-- time of the event that found it so); or rejected at once, with the reason.
CREATE TABLE holds (
    show_id    text        NOT NULL,
    hold_id    text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('held', 'confirmed', 'released', 'expired', 'rejected')),
    held_at    timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    decided_at timestamptz,
    reason     text        NOT NULL DEFAULT '',
    PRIMARY KEY (show_id, hold_id)
);

-- The seats a hold asked for, in the order it asked.
CREATE TABLE hold_seats (
    show_id  text    NOT NULL,
    hold_id  text    NOT NULL,
    position integer NOT NULL,
    seat     text    NOT NULL,
    PRIMARY KEY (show_id, hold_id, seat),
    FOREIGN KEY (show_id, hold_id) REFERENCES holds
);

-- +goose Down
DROP TABLE hold_seats;
DROP TABLE holds;
DROP TABLE seats;
DROP TABLE shows;
