using Ferry.Core.Security;

namespace Ferry.Connector;

/// <summary>How a connector runs; bound from 'ferry connector'.</summary>
public sealed class ConnectorOptions
{
    public required Ferry.Core.ControlPlane.ControllerEndpoints Controller { get; init; }
    public required ControllerTrust Trust { get; init; }

    /// <summary>Where the token pair lives; rewritten atomically (0600) on every rotation.</summary>
    public required string TokensPath { get; init; }

    /// <summary>Local address of the data-plane UDP socket (STUN now, QUIC and connectivity checks on the same socket).</summary>
    public System.Net.IPEndPoint UdpBind { get; init; } = new(System.Net.IPAddress.Any, 0);

    /// <summary>DNS server that names of resources are resolved with; the host's resolver when unset.</summary>
    public System.Net.IPEndPoint? DnsServer { get; init; }

    /// <summary>Folder of the local control socket ('ferry status'); none when unset.</summary>
    public string? StateDirectory { get; init; }

    /// <summary>Where to serve /healthz, /readyz and /metrics over plain HTTP; off when unset.</summary>
    public System.Net.IPEndPoint? MetricsListen { get; init; }

    /// <summary>Test-only: shifts the connector's clock to exercise the controller's ±5 s rule.</summary>
    public TimeSpan ClockSkew { get; init; }
}
