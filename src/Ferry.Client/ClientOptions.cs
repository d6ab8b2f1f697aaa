using Ferry.Core.Security;

namespace Ferry.Client;

/// <summary>How a client runs; bound from 'ferry client up'.</summary>
public sealed class ClientOptions
{
    public required Uri Controller { get; init; }
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

    /// <summary>Folder holding the local control socket that 'ferry client resources' and 'ferry status' talk to.</summary>
    public required string StateDirectory { get; init; }
}

/// <summary>One --forward: local port, and the resource host and port its connections reach.</summary>
public sealed record PortForwardSpec(int LocalPort, string Host, int Port)
{
    /// <summary>Parses "LOCALPORT=HOST:PORT".</summary>
    public static PortForwardSpec Parse(string text)
    {
        var eq = text.IndexOf('=', StringComparison.Ordinal);
        var colon = text.LastIndexOf(':');
        if (eq <= 0 || colon <= eq + 1
            || !int.TryParse(text[..eq], System.Globalization.CultureInfo.InvariantCulture, out var local) || local is < 0 or > 65535
            || !int.TryParse(text[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
        {
            throw new ArgumentException($"--forward '{text}' is not LOCALPORT=HOST:PORT (for example 15432=db.internal:5432)");
        }
        return new PortForwardSpec(local, text[(eq + 1)..colon].Trim('[', ']'), port);
    }
}
