using System.CommandLine;
using Ferry.Controller;

namespace Ferry.Cli.Commands;

/// <summary>'ferry controller': the control plane (admin API, daemon sessions, CA).</summary>
internal static class ControllerCommand
{
    public static Command Create()
    {
        var data = new Option<string>("--data") { Description = "Folder for the SQLite database, TLS certificate and admin.key", DefaultValueFactory = _ => "./ferry-data" };
        var listen = new Option<string>("--listen") { Description = "HOST:PORT to serve HTTPS on", DefaultValueFactory = _ => "127.0.0.1:8443" };
        var database = new Option<string?>("--database") { Description = "PostgreSQL connection string (\"Host=…;Database=…\"); SQLite under --data when omitted" };
        var tlsCert = new Option<string?>("--tls-cert") { Description = "PEM certificate to serve; generated on first start when omitted" };
        var tlsKey = new Option<string?>("--tls-key") { Description = "PEM private key of --tls-cert" };
        var trustedProxy = new Option<string[]>("--trusted-proxy") { Description = "IP of a proxy whose X-Forwarded-For is believed (repeatable)", AllowMultipleArgumentsPerToken = false };
        var heartbeat = new Option<double>("--heartbeat-interval") { Description = "Seconds between heartbeats (at most 5); offline after three missed", DefaultValueFactory = _ => 5 };
        var publicUrl = new Option<string?>("--public-url") { Description = "URL daemons use to reach this controller, for deploy instructions" };
        var replica = new Option<string?>("--replica-id") { Description = "Name of this replica among several on one PostgreSQL, unique to each (default: the host name; env FERRY_REPLICA_ID)" };
        var accessLifetime = new Option<double?>("--access-token-lifetime") { Description = "Seconds an access token stays valid", Hidden = true };
        var certificateLifetime = new Option<double?>("--certificate-lifetime") { Description = "Seconds a daemon or device certificate stays valid", Hidden = true };
        var consoleIdle = new Option<double?>("--console-idle-timeout") { Description = "Seconds an unused admin console session lasts (default 1800)" };
        var role = new Option<string>("--role") { Description = "all (default): one process; core: holds the database and listens on nothing, serving through --edge processes it dials; edge: the public side, no database", DefaultValueFactory = _ => "all" };
        role.AcceptOnlyFromAmong("all", "core", "edge");
        var edges = new Option<string?>("--edge") { Description = "core role: the edges' --link-listen addresses to dial, HOST:PORT separated by commas (env FERRY_EDGES)" };
        var linkListen = new Option<string?>("--link-listen") { Description = "edge role: HOST:PORT where the core's links connect" };
        var edgeSecret = new Option<string?>("--edge-secret-file") { Description = "core and edge roles: file with the shared secret (32+ random characters) that admits the core's links" };
        var metrics = OpsOptions.MetricsListen();
        var command = new Command("controller", "Run the controller: admin API, daemon sessions and certificate authority.")
        {
            data, listen, database, tlsCert, tlsKey, trustedProxy, heartbeat, publicUrl, replica, accessLifetime, certificateLifetime, consoleIdle,
            role, edges, linkListen, edgeSecret, metrics,
        };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var options = new ControllerOptions
            {
                DataDirectory = parse.GetValue(data)!,
                Listen = parse.GetValue(listen)!,
                Database = parse.GetValue(database) ?? Env.Get("FERRY_DATABASE"),
                TlsCertificatePath = parse.GetValue(tlsCert),
                TlsKeyPath = parse.GetValue(tlsKey),
                HeartbeatInterval = TimeSpan.FromSeconds(parse.GetValue(heartbeat)),
                PublicUrl = parse.GetValue(publicUrl),
                MetricsListen = OpsOptions.ParseMetricsListen(parse, metrics)?.ToString(),
            };
            if ((parse.GetValue(replica) ?? Env.Get("FERRY_REPLICA_ID")) is { Length: > 0 } r)
            {
                options.ReplicaId = r;
            }
            if (parse.GetValue(accessLifetime) is { } lifetime)
            {
                options.AccessTokenLifetime = TimeSpan.FromSeconds(lifetime);
            }
            if (parse.GetValue(certificateLifetime) is { } certLifetime)
            {
                options.CertificateLifetime = TimeSpan.FromSeconds(certLifetime);
            }
            if (parse.GetValue(consoleIdle) is { } idle)
            {
                options.ConsoleIdleTimeout = idle is >= 1 and <= 86400 ? TimeSpan.FromSeconds(idle) : throw new CliException($"--console-idle-timeout {idle} is out of range: give 1 to 86400 seconds", 2);
            }
            foreach (var proxy in parse.GetValue(trustedProxy) ?? [])
            {
                options.TrustedProxies.Add(proxy);
            }
            options.Role = parse.GetValue(role) switch { "core" => ControllerRole.Core, "edge" => ControllerRole.Edge, _ => ControllerRole.All };
            options.LinkListen = parse.GetValue(linkListen);
            options.EdgeSecretFile = parse.GetValue(edgeSecret) ?? Env.Get("FERRY_EDGE_SECRET_FILE");
            foreach (var edge in (parse.GetValue(edges) ?? Env.Get("FERRY_EDGES") ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                options.Edges.Add(edge);
            }
            if (options.Role == ControllerRole.Core && parse.GetResult(listen) is { Implicit: false })
            {
                throw new CliException("--role core listens on nothing: daemons and operators reach it through its edges; drop --listen (and give --edge)", 2);
            }
            if (options.Role != ControllerRole.Core && options.Edges.Count > 0)
            {
                throw new CliException("--edge is for --role core: the core dials out to those edges", 2);
            }
            if (options.Role != ControllerRole.Edge && options.LinkListen is not null)
            {
                throw new CliException("--link-listen is for --role edge: where the core's links connect", 2);
            }
            return await ControllerHost.RunAsync(options, Console.Out, ct);
        }));
        return command;
    }
}
