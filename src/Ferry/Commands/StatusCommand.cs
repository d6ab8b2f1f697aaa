using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Ferry.Core.Operations;

namespace Ferry.Cli.Commands;

/// <summary>'ferry status': finds the local client, connector and relay through their control sockets and shows each one's state.</summary>
internal static class StatusCommand
{
    private static readonly string[] Kinds = ["client", "connector", "relay"];

    /// <summary>One daemon looked for: where, and what it answered (null when nothing answers).</summary>
    private sealed record Found(string Kind, string StateFolder, bool Running, JsonElement? Status);

    public static Command Create()
    {
        var state = new Option<string?>("--state") { Description = "Look only in this state folder (any kind of daemon); the default folders of client, connector and relay otherwise" };
        var json = new Option<bool>("--json") { Description = "Print JSON: one entry per daemon looked for, with its full status" };
        var command = new Command("status", "Show the state of the Ferry daemons running on this host: session with the controller, flows, relay links.") { state, json };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var folder = parse.GetValue(state);
            var lookups = folder is not null
                ? Kinds.Select(k => (Kind: k, Folder: Path.GetFullPath(folder)))
                : Kinds.Select(k => (Kind: k, Folder: Path.GetFullPath(LocalControl.DefaultStateDirectory(k))));
            var found = new List<Found>();
            foreach (var (kind, dir) in lookups)
            {
                var text = await LocalControl.AskStatusAsync(dir, kind, ct);
                found.Add(new Found(kind, dir, text is not null, text is null ? null : JsonDocument.Parse(text).RootElement.Clone()));
            }
            var running = found.Where(f => f.Running).ToList();
            if (parse.GetValue(json))
            {
                // With --state, only the kind that answers (or all three, none answering) is of interest.
                var shown = folder is not null && running.Count > 0 ? running : found;
                Console.WriteLine(JsonSerializer.Serialize(shown.Select(f => new { kind = f.Kind, stateFolder = f.StateFolder, running = f.Running, status = f.Status }), Output.Json));
                return running.Count > 0 ? 0 : 3;
            }
            if (running.Count == 0)
            {
                throw new CliException(folder is not null
                    ? $"no client, connector or relay is running with state folder '{folder}' (nothing answers on client.sock, connector.sock or relay.sock there): start one with --state {folder}, e.g. 'ferry connector --tokens FILE --state {folder}'"
                    : "no Ferry daemon is running here: " + string.Join("; ", found.Select(NotRunning)), 3);
            }
            Output.Table(["KIND", "IDENTITY", "NAME", "CONTROLLER", "SESSION", "FLOWS", "RELAYS", "STATE FOLDER"], running.Select(Row));
            if (folder is null)
            {
                foreach (var missing in found.Where(f => !f.Running))
                {
                    Console.WriteLine(NotRunning(missing));
                }
            }
            return 0;
        }));
        return command;
    }

    private static string NotRunning(Found f) => f.Kind switch
    {
        "client" => $"no client running with state folder {f.StateFolder}: start it with 'ferry client --state {f.StateFolder} up …'",
        _ => $"no {f.Kind} running with state folder {f.StateFolder}: start it with 'ferry {f.Kind} --tokens FILE --state {f.StateFolder}'",
    };

    private static string?[] Row(Found f)
    {
        var s = f.Status!.Value;
        var connected = Bool(s, "connected");
        var since = Text(s, "connectedSince");
        var error = Text(s, "lastError");
        var session = connected
            ? "connected" + (since is null ? "" : " since " + FormatTime(since))
            : "disconnected" + (error is null ? "" : ": " + error);
        // The client counts connections to connectors; connector and relay count flows or links.
        var flows = f.Kind == "client" ? Count(s, "connectedTo") : (s.TryGetProperty("flows", out var n) ? n.GetInt32().ToString(CultureInfo.InvariantCulture) : null);
        var relays = f.Kind switch
        {
            "client" => Count(s, "relays"),
            "connector" => s.TryGetProperty("relayLinks", out var links) ? string.Join(",", links.EnumerateArray().Select(l => l.GetString())) is { Length: > 0 } joined ? joined : "0" : null,
            _ => s.TryGetProperty("listeners", out var listeners) ? string.Join(",", listeners.EnumerateArray().Select(l => l.GetString())) : null,
        };
        return [f.Kind, Text(s, "identity"), Text(s, "name"), Text(s, "controller"), session, flows, relays, f.StateFolder];
    }

    private static string FormatTime(string iso)
        => DateTimeOffset.TryParse(iso, CultureInfo.InvariantCulture, DateTimeStyles.None, out var t) ? t.ToUniversalTime().ToString("u", CultureInfo.InvariantCulture) : iso;

    private static string? Text(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static bool Bool(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.True;

    private static string? Count(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array ? v.GetArrayLength().ToString(CultureInfo.InvariantCulture) : null;
}
