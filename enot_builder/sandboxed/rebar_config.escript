%% -*- erlang -*-
%% Run by enot-builder inside a build's sandbox, in the project's directory:
%%   escript rebar_config.escript OUT
%% Reads rebar.config (evaluating rebar.config.script as rebar does, with CONFIG and
%% SCRIPT bound), prints what the server needs to know, one fact a line:
%%   port_specs            the project describes a NIF or driver with port_specs
%%   plugin <name>         a plugin (it is never fetched: builds are offline)
%%   dep <name> git <url> tag|branch|ref <value>
%%   dep <name> hex <requirement>
%%   dep <name> other
%% and writes OUT: the same configuration without deps and plugins, which rebar then
%% builds with the dependencies the server built on ERL_LIBS, never fetching any.
main([Out]) ->
    Config = config(),
    Deps = proplists:get_value(deps, Config, []),
    [io:format("port_specs~n") || proplists:get_value(port_specs, Config, []) =/= []],
    [io:format("plugin ~ts~n", [name(P)]) || P <- proplists:get_value(plugins, Config, [])],
    [dep(D) || D <- Deps],
    Kept = [Entry || Entry <- Config, not dropped(Entry)],
    Text = [io_lib:format("~tp.~n", [E]) || E <- [{deps, []} | Kept]],
    ok = file:write_file(Out, unicode:characters_to_binary(Text)).

config() ->
    Base = case filelib:is_regular("rebar.config") of
        true -> {ok, Terms} = file:consult("rebar.config"), Terms;
        false -> []
    end,
    case filelib:is_regular("rebar.config.script") of
        true ->
            Bindings = erl_eval:add_binding('SCRIPT', "rebar.config.script",
                erl_eval:add_binding('CONFIG', Base, erl_eval:new_bindings())),
            {ok, Result} = file:script("rebar.config.script", Bindings),
            Result;
        false -> Base
    end.

dropped({deps, _}) -> true;
dropped({plugins, _}) -> true;
dropped({project_plugins, _}) -> true;
dropped(_) -> false.

name(P) when is_atom(P) -> atom_to_list(P);
name(P) when is_tuple(P) -> name(element(1, P));
name(P) -> io_lib:format("~tp", [P]).

dep(Name) when is_atom(Name) -> io:format("dep ~ts hex any~n", [Name]);
dep({Name, Vsn}) when is_list(Vsn); is_binary(Vsn) -> io:format("dep ~ts hex ~ts~n", [Name, Vsn]);
dep({Name, {pkg, _}}) -> io:format("dep ~ts hex any~n", [Name]);
dep({Name, {pkg, _, Vsn}}) -> io:format("dep ~ts hex ~ts~n", [Name, Vsn]);
dep({Name, Source}) -> source(Name, Source);
dep({Name, _Vsn, Source}) -> source(Name, Source);
dep({Name, _Vsn, Source, _Opts}) -> source(Name, Source);
dep(Other) -> io:format("dep ~ts other~n", [name(Other)]).

source(Name, Source) when is_tuple(Source), element(1, Source) =:= git; is_tuple(Source), element(1, Source) =:= git_subdir ->
    Url = element(2, Source),
    case Source of
        {_, _, {Kind, Value}} when Kind =:= tag; Kind =:= branch; Kind =:= ref ->
            io:format("dep ~ts git ~ts ~ts ~ts~n", [Name, Url, Kind, Value]);
        {_, _, {Kind, Value}, _} when Kind =:= tag; Kind =:= branch; Kind =:= ref ->
            io:format("dep ~ts git ~ts ~ts ~ts~n", [Name, Url, Kind, Value]);
        {_, _, Branch} when is_list(Branch), Branch =/= "" ->
            io:format("dep ~ts git ~ts branch ~ts~n", [Name, Url, Branch]);
        _ -> io:format("dep ~ts git ~ts branch master~n", [Name, Url])
    end;
source(Name, _) -> io:format("dep ~ts other~n", [name(Name)]).
