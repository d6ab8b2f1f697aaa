using System.CommandLine;
using System.Net;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Ferry.Relay;

namespace Ferry.Cli.Commands;

/// <summary>'ferry relay': the always-available path (TLS/TCP packet forwarding between ticketed peers) and a STUN server.</summary>
internal static class RelayCommand
{
    public static Command Create()
    {
        var controller = new Option<string?>("--controller") { Description = "Controller URL, or several separated by commas to try in turn (or FERRY_CONTROLLER; or taken from the tokens file)" };
        var fingerprint = new Option<string?>("--controller-fingerprint") { Description = "SHA-256 fingerprint of the controller's TLS certificate (or FERRY_CONTROLLER_FINGERPRINT)" };
        var ca = new Option<string?>("--controller-ca") { Description = "PEM file of the CA that signed the controller's TLS certificate" };
        var tokens = new Option<string>("--tokens") { Description = "Tokens file (JSON from 'ferry admin relay provision --json'); rewritten on rotation", DefaultValueFactory = _ => "./relay-tokens.json" };
        var listen = new Option<string[]>("--listen") { Description = "IP:PORT for relay links, repeatable (30000-31000, or 443)", DefaultValueFactory = _ => ["0.0.0.0:30000"] };
        var stunListen = new Option<string[]>("--stun") { Description = "IP:PORT of the STUN server, repeatable", DefaultValueFactory = _ => ["0.0.0.0:3478"] };
        var advertise = new Option<string?>("--advertise") { Description = "Public IP or name peers dial when --listen binds a wildcard address" };
        var metrics = OpsOptions.MetricsListen();
        var state = OpsOptions.State("relay");
        var command = new Command("relay", "Run a relay: forwards peers' QUIC packets over TLS/TCP without reading them, and answers STUN.")
        {
            controller, fingerprint, ca, tokens, listen, stunListen, advertise, metrics, state,
        };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var tokensPath = parse.GetValue(tokens)!;
            ConnectorCommand.SeedTokensFromEnvironment(tokensPath, PeerIdentity.Relay);
            var file = TokenFile.Read(tokensPath);
            var url = parse.GetValue(controller) ?? Env.Get("FERRY_CONTROLLER") ?? file.Controller
                ?? throw new CliException("no controller URL: pass --controller or set FERRY_CONTROLLER", 2);
            var trust = ControllerTrust.Create(parse.GetValue(fingerprint) ?? Env.Get("FERRY_CONTROLLER_FINGERPRINT") ?? file.ControllerFingerprint, parse.GetValue(ca));
            using var loggers = DaemonLogging.Create();
            var daemon = new RelayDaemon(new RelayDaemonOptions
            {
                Controller = ConnectorCommand.ParseUrls(url),
                Trust = trust,
                TokensPath = tokensPath,
                TcpListen = Endpoints(parse.GetValue(listen)!, "--listen"),
                StunListen = Endpoints(parse.GetValue(stunListen)!, "--stun"),
                Advertise = parse.GetValue(advertise),
                StateDirectory = parse.GetValue(state),
                MetricsListen = OpsOptions.ParseMetricsListen(parse, metrics),
            }, loggers);
            await daemon.RunAsync(ct);
            return ct.IsCancellationRequested ? 0 : 3;
        }));
        return command;
    }

    private static IPEndPoint[] Endpoints(string[] values, string option)
        => [.. values.Select(v => IPEndPoint.TryParse(v, out var e) && v.Contains(':', StringComparison.Ordinal) ? e : throw new CliException($"{option} '{v}' is not IP:PORT", 2))];
}
