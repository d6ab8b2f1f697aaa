using System.Security.Cryptography.X509Certificates;

namespace Ferry.Relay;

/// <summary>Where a relay listens: the host name or address (also checked against the relay certificate's SAN) and TCP port.</summary>
/// <param name="Host">DNS name or IP literal of the relay.</param>
/// <param name="Port">TCP port of the relay.</param>
public sealed record RelayEndpoint(string Host, int Port)
{
    /// <inheritdoc />
    public override string ToString() => Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]:{Port}" : $"{Host}:{Port}";
}

/// <summary>Settings of a peer's <see cref="RelayLink"/> (and of every link a <see cref="RelayPool"/> opens).</summary>
public sealed class RelayLinkOptions
{
    /// <summary>This peer's certificate with private key, issued by the deployment CA (CN "kind/id").</summary>
    public required X509Certificate2 ClientCertificate { get; init; }

    /// <summary>The deployment CA: the only trust anchor accepted for the relay's certificate.</summary>
    public required X509Certificate2 CaCertificate { get; init; }

    /// <summary>When set, the relay's certificate CN must be exactly this ("relay/rl_eu1"); otherwise any "relay/…" is accepted.</summary>
    public string? ExpectedRelayIdentity { get; init; }

    /// <summary>Clock for keepalives, idle detection, timeouts and certificate validity.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>How often to ping the relay; keep it well under the relay's idle timeout (60 s by default).</summary>
    public TimeSpan KeepaliveInterval { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>The link is declared dead when nothing at all arrives from the relay for this long.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(45);

    /// <summary>Bound on TCP connect, TLS handshake and the first round trip together.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Packets waiting to go to the relay before <see cref="RelayLink.SendAsync"/> waits for room.</summary>
    public int OutboundQueueCapacity { get; init; } = 512;

    /// <summary>Received packets waiting for the application before new ones are dropped (as a UDP socket buffer would).</summary>
    public int InboundQueueCapacity { get; init; } = 4096;
}

/// <summary>One packet received through a relay: who sent it and its bytes (owned by the receiver).</summary>
/// <param name="FromPeer">Identity of the sending peer.</param>
/// <param name="Packet">The opaque packet.</param>
public readonly record struct RelayPacket(string FromPeer, ReadOnlyMemory<byte> Packet);

/// <summary>A pair bound on a link: the remote peer, the per-link channel number and the ticket's expiry.</summary>
/// <param name="RemotePeer">Identity of the other peer.</param>
/// <param name="Channel">Per-link channel number the relay assigned to that peer.</param>
/// <param name="NotAfter">Expiry of the ticket the binding rests on; bind a fresh ticket before it.</param>
public sealed record RelayBinding(string RemotePeer, ushort Channel, DateTimeOffset NotAfter);

/// <summary>Lifecycle of a relay link.</summary>
public enum RelayLinkState
{
    /// <summary>Connected and usable.</summary>
    Open,

    /// <summary>Closed by its owner.</summary>
    Closed,

    /// <summary>Ended by the relay, the network or a protocol failure; see <see cref="RelayLink.Completion"/>.</summary>
    Faulted,
}

/// <summary>How and why a relay link ended.</summary>
/// <param name="State">Closed (by its owner) or Faulted.</param>
/// <param name="Reason">The relay's reason code when it gave one (Error frame), or the local reason such as IdleTimeout.</param>
/// <param name="Message">Human-readable detail.</param>
/// <param name="Exception">The transport exception, if one ended the link.</param>
public sealed record RelayLinkClosure(RelayLinkState State, RelayRefusal Reason, string Message, Exception? Exception = null);

/// <summary>A relay refused something (a link, a ticket) or a link ended while an operation waited; carries the reason code.</summary>
public sealed class RelayException : Exception
{
    /// <summary>Creates an exception with a reason code.</summary>
    public RelayException(RelayRefusal reason, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        Reason = reason;
    }

    /// <summary>Creates an exception without a specific reason.</summary>
    public RelayException()
        : this(RelayRefusal.None, "relay operation failed")
    {
    }

    /// <summary>Creates an exception without a specific reason.</summary>
    public RelayException(string message)
        : this(RelayRefusal.None, message)
    {
    }

    /// <summary>Creates an exception without a specific reason.</summary>
    public RelayException(string message, Exception innerException)
        : this(RelayRefusal.None, message, innerException)
    {
    }

    /// <summary>Why the relay refused, or <see cref="RelayRefusal.None"/> when not a refusal.</summary>
    public RelayRefusal Reason { get; }
}
