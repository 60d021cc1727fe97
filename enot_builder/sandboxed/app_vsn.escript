%% -*- erlang -*-
%% Run by enot-builder inside a build's sandbox, in the project's directory:
%%   escript app_vsn.escript TAG_VERSION COMMIT FILE...
%% Gives each application resource file (src/*.app.src) whose vsn is computed at build
%% time a literal version, resolved as rebar3 resolves it for the tagged commit:
%% git and semver give the tag (TAG_VERSION: a leading "v" already dropped),
%% {git, short} and {git, long} the commit, {cmd, Cmd} the command's output. A file
%% that is not plain Erlang terms (an enot template) or whose vsn is a string is left
%% alone. Prints "<file> <old> -> <new>" for each file it rewrote.
main([TagVsn, Commit | Files]) ->
    [fix(File, TagVsn, Commit) || File <- Files],
    ok.

fix(File, TagVsn, Commit) ->
    case file:consult(File) of
        {ok, [{application, Name, Props}]} when is_list(Props) ->
            case lists:keyfind(vsn, 1, Props) of
                {vsn, Vsn} when not is_list(Vsn) ->
                    case resolve(Vsn, TagVsn, Commit) of
                        undefined -> io:format("~ts: vsn ~tp left as it is~n", [File, Vsn]);
                        New ->
                            Fixed = lists:keyreplace(vsn, 1, Props, {vsn, New}),
                            Text = io_lib:format("~tp.~n", [{application, Name, Fixed}]),
                            ok = file:write_file(File, unicode:characters_to_binary(Text)),
                            io:format("~ts: vsn ~tp -> ~tp~n", [File, Vsn, New])
                    end;
                _ -> ok
            end;
        _ -> ok
    end.

resolve(git, TagVsn, _) -> TagVsn;
resolve(semver, TagVsn, _) -> TagVsn;
resolve({git, short}, _, Commit) -> lists:sublist(Commit, 7);
resolve({git, long}, _, Commit) -> Commit;
resolve({cmd, Cmd}, _, _) when is_list(Cmd) -> string:trim(os:cmd(Cmd));
resolve(_, _, _) -> undefined.
