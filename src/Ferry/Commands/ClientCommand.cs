using System.CommandLine;
using System.Net.Http.Json;
using System.Text.Json;
using Ferry.Client;
using Ferry.Client.Access;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;

namespace Ferry.Cli.Commands;

/// <summary>'ferry client': a person's device or a headless service reaching resources.</summary>
internal static class ClientCommand
{
    private static readonly Option<string> State = new("--state")
    {
        Description = "Client state folder (holds the control socket)",
        DefaultValueFactory = _ => Ferry.Core.Operations.LocalControl.DefaultStateDirectory("client"),
        Recursive = true,
    };

    public static Command Create()
    {
        var command = new Command("client", "Run a client, or ask the running one.") { State };
        command.Subcommands.Add(Up());
        command.Subcommands.Add(Resources());
        command.Subcommands.Add(Status());
        command.Subcommands.Add(Connect());
        command.Subcommands.Add(Forward());
        command.Subcommands.Add(Mfa());
        return command;
    }

    private static Command Up()
    {
        var controller = new Option<string?>("--controller") { Description = "Controller URL, or several separated by commas to try in turn (or FERRY_CONTROLLER)" };
        var fingerprint = new Option<string?>("--controller-fingerprint") { Description = "SHA-256 fingerprint of the controller's TLS certificate (or FERRY_CONTROLLER_FINGERPRINT)" };
        var ca = new Option<string?>("--controller-ca") { Description = "PEM file of the CA that signed the controller's TLS certificate" };
        var user = new Option<string?>("--user") { Description = "Sign in as this user" };
        var passwordFile = new Option<string?>("--password-file") { Description = "File holding the user's password (or FERRY_PASSWORD)" };
        var keyFile = new Option<string?>("--service-account-key-file") { Description = "File holding a service account key (or FERRY_SERVICE_ACCOUNT_KEY)" };
        var device = new Option<string?>("--device-name") { Description = "Name this device shows under in the controller" };
        var socks = new Option<string>("--socks") { Description = "Loopback port of the SOCKS5 proxy, 0 for any free port, or 'off'", DefaultValueFactory = _ => "1080" };
        var http = new Option<string>("--http-proxy") { Description = "Loopback port of the HTTP CONNECT proxy, 0 for any free port, or 'off'", DefaultValueFactory = _ => "off" };
        var forward = new Option<string[]>("--forward") { Description = "LOCALPORT=HOST:PORT[/udp]: a loopback port whose connections (or, with /udp, datagrams) reach HOST:PORT (repeatable)" };
        var split = new Option<bool>("--split-tunnel") { Description = "Send destinations that match no resource straight out instead of refusing them" };
        var location = new Option<string?>("--location") { Description = "Where this device is, REGION or LAT,LON (or FERRY_LOCATION): it uses the nearest connector of each network" };
        var direct = new Option<string>("--direct") { Description = "on (default): connections move to a direct UDP path when one works; off: they stay on the relay", DefaultValueFactory = _ => "on" };
        direct.AcceptOnlyFromAmong("on", "off");
        var metrics = OpsOptions.MetricsListen();
        var command = new Command("up", "Sign in and stay connected: receives the device certificate and what policy grants, and serves SOCKS5, HTTP CONNECT and port forwards on loopback.")
        {
            controller, fingerprint, ca, user, passwordFile, keyFile, device, socks, http, forward, split, location, direct, metrics,
        };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var url = parse.GetValue(controller) ?? Env.Get("FERRY_CONTROLLER") ?? throw new CliException("no controller URL: pass --controller or set FERRY_CONTROLLER", 2);
            var trust = ControllerTrust.Create(parse.GetValue(fingerprint) ?? Env.Get("FERRY_CONTROLLER_FINGERPRINT"), parse.GetValue(ca));
            var key = ReadSecret(parse.GetValue(keyFile), "FERRY_SERVICE_ACCOUNT_KEY");
            var password = ReadSecret(parse.GetValue(passwordFile), "FERRY_PASSWORD");
            var userName = parse.GetValue(user);
            if (key is null && (userName is null || password is null))
            {
                throw new CliException("sign in with --user and a password (--password-file or FERRY_PASSWORD), or with a service account key (--service-account-key-file or FERRY_SERVICE_ACCOUNT_KEY)", 2);
            }
            var locationText = parse.GetValue(location) ?? Env.Get("FERRY_LOCATION");
            Ferry.Core.Model.GeoLocation? where = null;
            if (locationText is not null && !Ferry.Core.Model.GeoLocation.TryParse(locationText, out where, out var locationError))
            {
                throw new CliException($"--location: {locationError}", 2);
            }
            using var loggers = DaemonLogging.Create();
            var daemon = new ClientDaemon(new ClientOptions
            {
                Controller = ConnectorCommand.ParseUrls(url),
                Trust = trust,
                User = key is null ? userName : null,
                Password = key is null ? password : null,
                ServiceAccountKey = key,
                DeviceName = parse.GetValue(device) ?? Environment.MachineName,
                StateDirectory = parse.GetValue(State)!,
                MetricsListen = OpsOptions.ParseMetricsListen(parse, metrics),
                SocksPort = Port(parse.GetValue(socks)!, "--socks"),
                HttpProxyPort = Port(parse.GetValue(http)!, "--http-proxy"),
                Forwards = [.. (parse.GetValue(forward) ?? []).Select(PortForwardSpec.Parse)],
                SplitTunnel = parse.GetValue(split),
                Location = where,
                DirectPaths = parse.GetValue(direct) != "off",
            }, loggers);
            await daemon.RunAsync(ct);
            return 0;
        }));
        return command;
    }

    private static Command Resources()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON" };
        var command = new Command("resources", "List the resources the running client may reach.") { json };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var resources = await AskAsync<ResourceGrant[]>(parse.GetValue(State)!, "/resources", ct);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(resources, Output.Json));
                return 0;
            }
            Output.Table(["NAME", "NETWORK", "ADDRESS", "TCP", "UDP", "LOCKED"], resources.Select(r => new[] { r.Name, r.Network, r.Address, r.Tcp, r.Udp, r.Locked ?? "" }));
            return 0;
        }));
        return command;
    }

    private static Command Status()
    {
        var command = new Command("status", "Show the running client's connection state as JSON.");
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var status = await AskAsync<ClientStatus>(parse.GetValue(State)!, "/status", ct);
            Console.WriteLine(JsonSerializer.Serialize(status, Output.Json));
            return 0;
        }));
        return command;
    }

    private static int? Port(string text, string option)
    {
        if (text.Equals("off", StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }
        return int.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, out var port) && port is >= 0 and <= 65535
            ? port
            : throw new CliException($"{option} '{text}' is not a port (0-65535) or 'off'", 2);
    }

    /// <summary>'ferry client forward 15432 db.internal:5432': one more port forward in the running client, for as long as it runs.</summary>
    private static Command Forward()
    {
        var local = new Argument<int>("local-port") { Description = "Loopback port to listen on (0 picks a free one)" };
        var target = new Argument<string>("target") { Description = "Resource HOST:PORT the forwarded connections reach" };
        var udp = new Option<bool>("--udp") { Description = "Forward UDP datagrams instead of TCP connections" };
        var command = new Command("forward", "Add a port forward to the running client: connections to 127.0.0.1:LOCAL-PORT reach TARGET through Ferry.") { local, target, udp };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var state = parse.GetValue(State)!;
            var spec = $"{parse.GetValue(local)}={parse.GetValue(target)}{(parse.GetValue(udp) ? "/udp" : "")}";
            try
            {
                PortForwardSpec.Parse(spec);
            }
            catch (ArgumentException e)
            {
                throw new CliException(e.Message.Replace("--forward", "forward", StringComparison.Ordinal), 2);
            }
            using var http = ClientControl.Connect(state);
            HttpResponseMessage response;
            try
            {
                response = await http.PostAsJsonAsync("/forwards", new ForwardRequest(spec), ct);
            }
            catch (HttpRequestException)
            {
                throw new CliException($"no client is running with state folder '{state}' (nothing answers on {ClientControl.SocketPath(state)}): start one with 'ferry client up'");
            }
            using (response)
            {
                if (!response.IsSuccessStatusCode)
                {
                    var problem = await Ferry.Core.Api.ApiProblem.ReadAsync(response, ct);
                    throw new CliException($"the client refused the forward: {problem.Detail}");
                }
                var added = await response.Content.ReadFromJsonAsync<ForwardAdded>(ct) ?? throw new CliException("the client answered nothing");
                Console.WriteLine($"forward {added.Listening} -> {parse.GetValue(target)}{(parse.GetValue(udp) ? " (UDP)" : "")}; it lasts as long as the running client");
            }
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// 'ferry client mfa [CODE]': gives the running client's controller a code from the user's authenticator app, which unlocks
    /// networks that require a second factor for this device until it goes unused for the network's threshold.
    /// </summary>
    private static Command Mfa()
    {
        var code = new Argument<string?>("code") { Description = "The 6-digit code your authenticator app shows for Ferry (asked for when left out)", Arity = ArgumentArity.ZeroOrOne };
        var command = new Command("mfa", "Confirm your second factor: unlocks networks that require one for this device.") { code };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var state = parse.GetValue(State)!;
            var given = parse.GetValue(code);
            if (given is null)
            {
                if (!Console.IsInputRedirected)
                {
                    Console.Error.Write("Code from your authenticator app: ");
                }
                given = (await Console.In.ReadLineAsync(ct))?.Trim();
                if (string.IsNullOrEmpty(given))
                {
                    throw new CliException("no code given: run 'ferry client mfa CODE' with the 6 digits your authenticator app shows", 2);
                }
            }
            using var http = ClientControl.Connect(state);
            HttpResponseMessage response;
            try
            {
                response = await http.PostAsJsonAsync("/mfa", new MfaRequest(given), ct);
            }
            catch (HttpRequestException)
            {
                throw new CliException($"no client is running with state folder '{state}' (nothing answers on {ClientControl.SocketPath(state)}): start one with 'ferry client up'");
            }
            using (response)
            {
                if (!response.IsSuccessStatusCode)
                {
                    var problem = await Ferry.Core.Api.ApiProblem.ReadAsync(response, ct);
                    throw new CliException($"second factor refused: {problem.Detail}");
                }
                var result = await response.Content.ReadFromJsonAsync<Ferry.Core.Api.DeviceMfaResult>(ct) ?? throw new CliException("the client answered nothing");
                Console.WriteLine(result.Networks.Length == 0
                    ? "second factor confirmed; no network requires one right now"
                    : $"second factor confirmed: {string.Join(", ", result.Networks.Select(n => $"network '{n.Network}' unlocked until {n.IdleTimeoutSeconds} s pass without traffic"))}");
            }
            return 0;
        }));
        return command;
    }

    /// <summary>'ferry client connect HOST PORT': joins stdin/stdout to a resource through the running client (for ssh -o ProxyCommand).</summary>
    private static Command Connect()
    {
        var host = new Argument<string>("host") { Description = "Resource host name or IP" };
        var port = new Argument<int>("port") { Description = "Port" };
        var command = new Command("connect", "Join standard input and output to HOST:PORT through the running client (ssh -o ProxyCommand='ferry client connect %h %p').") { host, port };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            // Checked here: the SOCKS5 request carries 16 bits, so 65536 + N would otherwise reach port N.
            if (parse.GetValue(port) is < 1 or > 65535)
            {
                throw new CliException($"port {parse.GetValue(port)} is not a TCP port (1-65535)", 2);
            }
            var status = await AskAsync<ClientStatus>(parse.GetValue(State)!, "/status", ct);
            var socks = status.Listeners.FirstOrDefault(l => l.StartsWith("socks5 ", StringComparison.Ordinal))
                ?? throw new CliException("the running client has no SOCKS5 proxy (started with --socks off)");
            var endpoint = System.Net.IPEndPoint.Parse(socks["socks5 ".Length..]);
            using var socket = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
            await socket.ConnectAsync(endpoint, ct);
            await using var stream = new System.Net.Sockets.NetworkStream(socket, ownsSocket: false);
            await Socks5Connect.HandshakeAsync(stream, parse.GetValue(host)!, parse.GetValue(port), ct);
            await using var stdin = Console.OpenStandardInput();
            await using var stdout = Console.OpenStandardOutput();
            var up = Task.Run(async () =>
            {
                await stdin.CopyToAsync(stream, ct);
                socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            }, ct);
            await stream.CopyToAsync(stdout, ct);
            await stdout.FlushAsync(ct);
            return 0;
        }));
        return command;
    }

    private static async Task<T> AskAsync<T>(string state, string path, CancellationToken ct)
    {
        try
        {
            using var http = ClientControl.Connect(state);
            return await http.GetFromJsonAsync<T>(path, ct) ?? throw new CliException("the client answered nothing");
        }
        catch (HttpRequestException)
        {
            throw new CliException($"no client is running with state folder '{state}' (nothing answers on {ClientControl.SocketPath(state)}): start one with 'ferry client up'");
        }
        catch (TaskCanceledException e) when (e.InnerException is TimeoutException && !ct.IsCancellationRequested)
        {
            throw new CliException($"the client with state folder '{state}' accepted the question on {ClientControl.SocketPath(state)} but did not answer within 10 s: it is overloaded or hung; see its log, and restart it if it stays so");
        }
    }

    private static string? ReadSecret(string? file, string variable)
    {
        if (file is not null)
        {
            try
            {
                return File.ReadAllText(file).Trim();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new CliException($"cannot read '{file}': {e.Message}");
            }
        }
        return Env.Get(variable);
    }
}
