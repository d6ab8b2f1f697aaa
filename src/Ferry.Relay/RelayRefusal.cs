namespace Ferry.Relay;

/// <summary>Why a relay refused a link, a binding or a packet; also the reason code carried by BindRefused and Error frames.</summary>
public enum RelayRefusal : byte
{
    /// <summary>Not a refusal.</summary>
    None = 0,

    /// <summary>The ticket could not be decoded.</summary>
    TicketMalformed = 1,

    /// <summary>The ticket signature does not verify against the deployment CA.</summary>
    TicketBadSignature = 2,

    /// <summary>The ticket is past its expiry (beyond the clock tolerance).</summary>
    TicketExpired = 3,

    /// <summary>The presenter of the ticket is not one of the two peers it names.</summary>
    TicketNotForPresenter = 4,

    /// <summary>The link already holds as many bindings as the relay allows.</summary>
    TooManyBindings = 5,

    /// <summary>The peer presented no client certificate.</summary>
    NoClientCertificate = 6,

    /// <summary>The peer certificate does not chain to the deployment CA, or is outside its validity.</summary>
    UntrustedCertificate = 7,

    /// <summary>The certificate subject CN is not of the form "kind/id".</summary>
    BadIdentity = 8,

    /// <summary>The TLS handshake failed or timed out for another reason.</summary>
    HandshakeFailed = 9,

    /// <summary>Data named a channel that is not bound on the link.</summary>
    UnknownChannel = 10,

    /// <summary>The destination peer has no link to this relay.</summary>
    PeerNotConnected = 11,

    /// <summary>The destination peer is connected but has not bound a ticket for the sender.</summary>
    PeerNotBound = 12,

    /// <summary>The destination's outbound queue stayed full; the packet was dropped.</summary>
    QueueFull = 13,

    /// <summary>The link sent a frame that breaks the protocol; the link is closed.</summary>
    ProtocolError = 14,

    /// <summary>Nothing was received on the link within the idle timeout; the link is closed.</summary>
    IdleTimeout = 15,

    /// <summary>The same identity connected again; the older link is closed.</summary>
    Replaced = 16,

    /// <summary>The relay is shutting down.</summary>
    ShuttingDown = 17,

    /// <summary>The relay is at its connection limit.</summary>
    TooManyConnections = 18,
}
