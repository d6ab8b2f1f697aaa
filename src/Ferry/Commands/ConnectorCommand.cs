using System.CommandLine;
using Ferry.Connector;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Microsoft.Extensions.Logging;

namespace Ferry.Cli.Commands;

/// <summary>'ferry connector': the daemon inside a remote network; dials out only.</summary>
internal static class ConnectorCommand
{
    public static Command Create()
    {
        var controller = new Option<string?>("--controller") { Description = "Controller URL, or several separated by commas to try in turn (or FERRY_CONTROLLER; or taken from the tokens file)" };
        var fingerprint = new Option<string?>("--controller-fingerprint") { Description = "SHA-256 fingerprint of the controller's TLS certificate (or FERRY_CONTROLLER_FINGERPRINT)" };
        var ca = new Option<string?>("--controller-ca") { Description = "PEM file of the CA that signed the controller's TLS certificate" };
        var tokens = new Option<string>("--tokens") { Description = "Tokens file (JSON from 'ferry admin connector provision --json'); rewritten on rotation", DefaultValueFactory = _ => "./connector-tokens.json" };
        var udp = new Option<string>("--udp-listen") { Description = "Local IP:PORT of the data-plane UDP socket (STUN and QUIC)", DefaultValueFactory = _ => "0.0.0.0:0" };
        var dns = new Option<string?>("--dns-server") { Description = "DNS server (IP[:port]) to resolve resource names with; the host's resolver by default" };
        var skew = new Option<double>("--test-clock-skew") { Description = "Test only: shift this connector's clock by N seconds", Hidden = true };
        var metrics = OpsOptions.MetricsListen();
        var state = OpsOptions.State("connector");
        var command = new Command("connector", "Run a connector: serves the resources of its remote network, dialing out to the controller only.")
        {
            controller, fingerprint, ca, tokens, udp, dns, skew, metrics, state,
        };
        command.SetAction((parse, ct) => FerryCommandLine.GuardAsync(async () =>
        {
            var tokensPath = parse.GetValue(tokens)!;
            SeedTokensFromEnvironment(tokensPath, PeerIdentity.Connector);
            var file = TokenFile.Read(tokensPath);
            var url = parse.GetValue(controller) ?? Env.Get("FERRY_CONTROLLER") ?? file.Controller
                ?? throw new CliException("no controller URL: pass --controller or set FERRY_CONTROLLER", 2);
            var trust = ControllerTrust.Create(
                parse.GetValue(fingerprint) ?? Env.Get("FERRY_CONTROLLER_FINGERPRINT") ?? file.ControllerFingerprint,
                parse.GetValue(ca));
            using var loggers = DaemonLogging.Create();
            var dnsText = parse.GetValue(dns);
            var daemon = new ConnectorDaemon(new ConnectorOptions
            {
                Controller = ParseUrls(url),
                Trust = trust,
                TokensPath = tokensPath,
                ClockSkew = TimeSpan.FromSeconds(parse.GetValue(skew)),
                StateDirectory = parse.GetValue(state),
                MetricsListen = OpsOptions.ParseMetricsListen(parse, metrics),
                UdpBind = System.Net.IPEndPoint.TryParse(parse.GetValue(udp)!, out var bind) ? bind : throw new CliException($"--udp-listen '{parse.GetValue(udp)}' is not IP:PORT", 2),
                DnsServer = dnsText is null ? null : System.Net.IPEndPoint.TryParse(dnsText.Contains(':', StringComparison.Ordinal) ? dnsText : dnsText + ":53", out var dnsEndpoint)
                    ? dnsEndpoint : throw new CliException($"--dns-server '{dnsText}' is not IP or IP:PORT", 2),
            }, loggers);
            await daemon.RunAsync(ct);
            return ct.IsCancellationRequested ? 0 : 3;
        }));
        return command;
    }

    /// <summary>Containers pass the first pair as environment variables; it is written to the tokens file once, and the file rules from then on.</summary>
    internal static void SeedTokensFromEnvironment(string path, string kind)
    {
        var access = Env.Get("FERRY_ACCESS_TOKEN");
        var refresh = Env.Get("FERRY_REFRESH_TOKEN");
        var id = Env.Get("FERRY_DAEMON_ID");
        if (File.Exists(path) || string.IsNullOrEmpty(access) || string.IsNullOrEmpty(refresh))
        {
            return;
        }
        if (string.IsNullOrEmpty(id))
        {
            throw new CliException("FERRY_ACCESS_TOKEN and FERRY_REFRESH_TOKEN need FERRY_DAEMON_ID as well", 2);
        }
        new TokenFile { Kind = kind, Id = id, AccessToken = access, RefreshToken = refresh, AccessTokenExpiresAt = DateTimeOffset.UnixEpoch }.Save(path);
    }

    internal static Uri ParseUrl(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("https" or "http"))
        {
            throw new CliException($"controller URL '{url}' is not valid: expected https://HOST:PORT", 2);
        }
        return uri;
    }

    /// <summary>One controller URL, or several separated by commas (tried in turn).</summary>
    internal static Ferry.Core.ControlPlane.ControllerEndpoints ParseUrls(string urls)
        => Ferry.Core.ControlPlane.ControllerEndpoints.TryParse(urls, out var endpoints, out var error) ? endpoints! : throw new CliException(error!, 2);
}
