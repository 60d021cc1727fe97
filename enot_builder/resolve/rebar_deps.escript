#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noinput
%% The dependencies of a rebar project, read as rebar3 reads them. Run by the build
%% server inside the build's sandbox, without network: rebar.config.script is the
%% package's own code.
%%
%%   rebar_deps.escript read DIR OUT
%%       evaluates DIR/rebar.config, then DIR/rebar.config.script with the bindings
%%       'CONFIG' (the terms of rebar.config, [] without one) and 'SCRIPT' (its path),
%%       as rebar does, and writes the `deps` found into OUT as JSON:
%%       {"deps": [{"name", "source": "git"|"registry"|"unsupported", ...}]}.
%%   rebar_deps.escript rewrite DIR RESOLVED
%%       writes DIR/rebar.config as the evaluated configuration with `deps` replaced
%%       by the terms of RESOLVED ({Name, Url, Ref} each: {Name, {git, Url, {tag, Ref}}}),
%%       and moves rebar.config.script aside (its work is done: running it again on
%%       its own output would apply it twice).
%%
%% Exits 0 when it wrote its output; otherwise prints why and exits 1.

main(["read", Dir, Out]) ->
    Config = config(Dir),
    Deps = case lists:keyfind(deps, 1, Config) of
               {deps, List} when is_list(List) -> List;
               {deps, _} -> fail("rebar.config: deps is not a list");
               false -> []
           end,
    Json = ["{\"deps\": [", join([dep(D) || D <- Deps]), "]}\n"],
    ok = file:write_file(Out, unicode:characters_to_binary(Json));
main(["rewrite", Dir, Resolved]) ->
    Config = config(Dir),
    Pins = case file:consult(Resolved) of
               {ok, Terms} -> Terms;
               {error, Reason} -> fail("cannot read " ++ Resolved ++ ": " ++ file:format_error(Reason))
           end,
    Deps = [{Name, {git, Url, {tag, Ref}}} || {Name, Url, Ref} <- Pins],
    New = lists:keystore(deps, 1, Config, {deps, Deps}),
    Text = [io_lib:format("~tp.~n", [Term]) || Term <- New],
    File = filename:join(Dir, "rebar.config"),
    Script = File ++ ".script",
    ok = file:write_file(File, unicode:characters_to_binary(
                                 ["%% written by enot-builder: the evaluated configuration, "
                                  "with the dependencies it resolved\n", Text])),
    case filelib:is_regular(Script) of
        true -> ok = file:rename(Script, Script ++ ".evaluated");
        false -> ok
    end;
main(_) ->
    fail("usage: rebar_deps.escript read DIR OUT | rewrite DIR RESOLVED").

config(Dir) ->
    File = filename:join(Dir, "rebar.config"),
    Script = File ++ ".script",
    Base = case filelib:is_regular(File) of
               true ->
                   case file:consult(File) of
                       {ok, Terms} -> Terms;
                       {error, Reason} -> fail("rebar.config: " ++ file:format_error(Reason))
                   end;
               false -> []
           end,
    case filelib:is_regular(Script) of
        true ->
            Bindings = erl_eval:add_binding('SCRIPT', Script,
                                            erl_eval:add_binding('CONFIG', Base,
                                                                 erl_eval:new_bindings())),
            case file:script(Script, Bindings) of
                {ok, Result} when is_list(Result) -> Result;
                {ok, _} -> fail("rebar.config.script did not return a list of terms");
                {error, Reason2} ->
                    fail("rebar.config.script: " ++ file:format_error(Reason2))
            end;
        false -> Base
    end.

%% One dependency, in every form rebar3 and rebar 2 accept.
dep(Name) when is_atom(Name) -> registry(Name, Name, undefined);
dep({Name, Vsn}) when is_atom(Name), (is_list(Vsn) orelse is_binary(Vsn)) ->
    registry(Name, Name, Vsn);
dep({Name, {pkg, Package}}) when is_atom(Name) -> registry(Name, Package, undefined);
dep({Name, Vsn, {pkg, Package}}) when is_atom(Name), (is_list(Vsn) orelse is_binary(Vsn)) ->
    registry(Name, Package, Vsn);
dep({Name, Source}) when is_atom(Name), is_tuple(Source) -> source(Name, Source);
dep({Name, _VsnRegex, Source}) when is_atom(Name), is_tuple(Source) -> source(Name, Source);
dep({Name, _VsnRegex, Source, _Options}) when is_atom(Name), is_tuple(Source) ->
    source(Name, Source);
dep(Other) when is_tuple(Other), tuple_size(Other) > 0, is_atom(element(1, Other)) ->
    unsupported(element(1, Other), io_lib:format("a dependency rebar does not describe: ~0tp", [Other]));
dep(Other) ->
    unsupported('?', io_lib:format("a dependency rebar does not describe: ~0tp", [Other])).

source(Name, {git, Url}) -> git(Name, Url, []);
source(Name, {git, Url, {tag, Tag}}) -> git(Name, Url, [{tag, Tag}]);
source(Name, {git, Url, {branch, Branch}}) -> git(Name, Url, [{branch, Branch}]);
source(Name, {git, Url, {ref, Ref}}) -> git(Name, Url, [{ref, Ref}]);
source(Name, {git, Url, ""}) -> git(Name, Url, []);
source(Name, {git, Url, HEAD}) when HEAD =:= "HEAD"; HEAD =:= <<"HEAD">> -> git(Name, Url, []);
source(Name, {git, Url, Rev}) when is_list(Rev); is_binary(Rev) ->
    %% rebar 2: a plain string is checked out as it is: a commit, a tag or a branch
    %% (the repository tells which).
    case is_commit(Rev) of
        true -> git(Name, Url, [{ref, Rev}]);
        false -> git(Name, Url, [{revision, Rev}])
    end;
source(Name, {git, Url, Rev, _Options}) -> source(Name, {git, Url, Rev});
source(Name, {pkg, Package}) -> registry(Name, Package, undefined);
source(Name, Source) ->
    Kind = element(1, Source),
    unsupported(Name, io_lib:format("~0tp dependencies are not built here (only git and the registry)",
                                    [Kind])).

is_commit(Rev) ->
    Text = text(Rev),
    byte_size(Text) =:= 40 andalso
        lists:all(fun(C) -> (C >= $0 andalso C =< $9) orelse (C >= $a andalso C =< $f) end,
                  binary_to_list(Text)).

git(Name, Url, Pin) ->
    case is_text(Url) andalso lists:all(fun({_, V}) -> is_text(V) end, Pin) of
        true ->
            object([{"name", atom(Name)}, {"source", <<"git">>}, {"url", text(Url)}
                    | [{atom_to_list(K), text(V)} || {K, V} <- Pin]]);
        false ->
            unsupported(Name, io_lib:format("a git dependency whose URL or pin is not text: ~0tp",
                                            [{Url, Pin}]))
    end.

registry(Name, Package, Vsn) when is_atom(Package) -> registry(Name, atom_to_binary(Package, utf8), Vsn);
registry(Name, Package, Vsn) ->
    case is_text(Package) andalso (Vsn =:= undefined orelse is_text(Vsn)) of
        true ->
            object([{"name", atom(Name)}, {"source", <<"registry">>}, {"package", text(Package)}
                    | [{"requirement", text(Vsn)} || Vsn =/= undefined]]);
        false ->
            unsupported(Name, io_lib:format("a registry dependency that is not text: ~0tp",
                                            [{Package, Vsn}]))
    end.

unsupported(Name, Why) ->
    object([{"name", atom(Name)}, {"source", <<"unsupported">>},
            {"problem", unicode:characters_to_binary(lists:flatten(Why))}]).

atom(A) when is_atom(A) -> atom_to_binary(A, utf8).

is_text(T) when is_binary(T) -> unicode:characters_to_binary(T) =:= T;
is_text(T) when is_list(T) -> is_binary(catch unicode:characters_to_binary(T));
is_text(_) -> false.

text(T) -> unicode:characters_to_binary(T).

%% JSON, for the few shapes written here: an object of strings.
object(Pairs) ->
    ["{", join([[string(list_to_binary(K)), ": ", string(V)] || {K, V} <- Pairs]), "}"].

string(Bin) ->
    [$", [escape(C) || C <- unicode:characters_to_list(Bin)], $"].

escape($") -> "\\\"";
escape($\\) -> "\\\\";
escape(C) when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
escape(C) -> C.

join([]) -> [];
join([First | Rest]) -> [First | [[", ", X] || X <- Rest]].

fail(Message) ->
    io:format(standard_error, "rebar_deps: ~ts~n", [Message]),
    halt(1).
