using System.Net;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Relay;

/// <summary>Settings of a <see cref="RelayServer"/>.</summary>
public sealed class RelayServerOptions
{
    /// <summary>Endpoints to listen on; port 0 picks a free port (see <see cref="RelayServer.BoundEndpoints"/>).</summary>
    public IList<IPEndPoint> Endpoints { get; init; } = [];

    /// <summary>The relay's certificate with private key: CN "relay/&lt;id&gt;", the relay's names and addresses in SAN.</summary>
    public required X509Certificate2 ServerCertificate { get; init; }

    /// <summary>The deployment CA: the only trust anchor for peer certificates and the key that signs tickets.</summary>
    public required X509Certificate2 CaCertificate { get; init; }

    /// <summary>Clock for ticket expiry, certificate validity, idle timeouts and rates.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>A link that sends nothing (not even a Ping) for this long is closed. Peers ping well inside it.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Longest time a TCP connection may take to complete the TLS handshake.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Packets queued per link towards its peer before the relay starts dropping.</summary>
    public int OutboundQueueCapacity { get; init; } = 512;

    /// <summary>How long a sender waits for room in a full destination queue before the packet is dropped.</summary>
    public TimeSpan QueueFullWait { get; init; } = TimeSpan.FromMilliseconds(5);

    /// <summary>Most peer pairs one link may bind at once (at most 65535 channels exist per link).</summary>
    public int MaxBindingsPerLink { get; init; } = 4096;

    /// <summary>Most concurrent TCP connections, including ones still in the handshake.</summary>
    public int MaxConnections { get; init; } = 10_000;
}
