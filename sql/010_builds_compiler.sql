-- Which compiler built a build's package: enot, or, for the rebar projects enot cannot
-- build, rebar3 or rebar 2 (enot_builder/fallback.py). It is shown on the build and
-- package pages and in /search. NULL where nothing was built (a failed build) and for
-- builds made before this column (all of them by enot).

ALTER TABLE builds ADD COLUMN compiler text
    CONSTRAINT builds_compiler_known CHECK (compiler IN ('enot', 'rebar3', 'rebar'));
