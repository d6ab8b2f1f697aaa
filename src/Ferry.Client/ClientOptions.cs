using Ferry.Core.Security;

namespace Ferry.Client;

/// <summary>How a client runs; bound from 'ferry client up'.</summary>
public sealed class ClientOptions
{
    /// <summary>The controller's addresses, tried in turn.</summary>
    public required Ferry.Core.ControlPlane.ControllerEndpoints Controller { get; init; }
    public required ControllerTrust Trust { get; init; }
    public string? User { get; init; }
    public string? Password { get; init; }
    public string? ServiceAccountKey { get; init; }
    public string DeviceName { get; init; } = Environment.MachineName;

    /// <summary>Loopback port of the SOCKS5 proxy (0 picks a free one; null turns it off).</summary>
    public int? SocksPort { get; init; } = 1080;

    /// <summary>Loopback port of the HTTP CONNECT proxy (0 picks a free one; null turns it off).</summary>
    public int? HttpProxyPort { get; init; }

    /// <summary>Named port forwards: a loopback port whose connections all go to one resource host and port.</summary>
    public IReadOnlyList<PortForwardSpec> Forwards { get; init; } = [];

    /// <summary>Destinations that match no resource go straight out instead of being refused.</summary>
    public bool SplitTunnel { get; init; }

    /// <summary>Whether connections look for a direct path beside the relay (on by default).</summary>
    public bool DirectPaths { get; init; } = true;

    /// <summary>Where this client is, so it uses the nearest connector of each network; null when not set.</summary>
    public Ferry.Core.Model.GeoLocation? Location { get; init; }

    /// <summary>Folder holding the local control socket that 'ferry client resources' and 'ferry status' talk to.</summary>
    public required string StateDirectory { get; init; }

    /// <summary>Where to serve /healthz, /readyz and /metrics over plain HTTP; off when unset.</summary>
    public System.Net.IPEndPoint? MetricsListen { get; init; }
}

/// <summary>One --forward: local port, the resource host and port its traffic reaches, and whether it forwards TCP connections or UDP datagrams.</summary>
public sealed record PortForwardSpec(int LocalPort, string Host, int Port, Ferry.Core.Flows.FlowProtocol Protocol = Ferry.Core.Flows.FlowProtocol.Tcp)
{
    /// <summary>Parses "LOCALPORT=HOST:PORT", optionally ending in "/tcp" (the default) or "/udp".</summary>
    public static PortForwardSpec Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var protocol = Ferry.Core.Flows.FlowProtocol.Tcp;
        var spec = text;
        var slash = text.LastIndexOf('/');
        if (slash >= 0)
        {
            var suffix = text[(slash + 1)..];
            protocol = suffix.ToUpperInvariant() switch
            {
                "TCP" => Ferry.Core.Flows.FlowProtocol.Tcp,
                "UDP" => Ferry.Core.Flows.FlowProtocol.Udp,
                _ => throw new ArgumentException(
                    $"--forward '{text}' ends in '/{suffix}', which is not a protocol: end it with /tcp or /udp, or leave the suffix out for TCP (for example 5353=10.0.0.5:53/udp)"),
            };
            spec = text[..slash];
        }
        var eq = spec.IndexOf('=', StringComparison.Ordinal);
        var colon = spec.LastIndexOf(':');
        if (eq <= 0 || colon <= eq + 1
            || !int.TryParse(spec[..eq], System.Globalization.CultureInfo.InvariantCulture, out var local) || local is < 0 or > 65535
            || !int.TryParse(spec[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
        {
            throw new ArgumentException($"--forward '{text}' is not LOCALPORT=HOST:PORT[/tcp|/udp] (for example 15432=db.internal:5432 or 5353=10.0.0.5:53/udp)");
        }
        return new PortForwardSpec(local, spec[(eq + 1)..colon].Trim('[', ']'), port, protocol);
    }
}
