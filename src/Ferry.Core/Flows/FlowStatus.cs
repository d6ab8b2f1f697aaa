namespace Ferry.Core.Flows;

/// <summary>How the connector answered a flow; the numeric values are on the wire.</summary>
public enum FlowStatus : byte
{
    /// <summary>The connector reached the destination; bytes follow.</summary>
    Ok = 0,

    /// <summary>A resource covers the destination, but not for this identity, port or protocol.</summary>
    Denied = 1,

    /// <summary>No resource of the network covers the destination.</summary>
    NoSuchResource = 2,

    /// <summary>The name does not resolve on the connector host (NXDOMAIN or no addresses).</summary>
    NameNotFound = 3,

    /// <summary>The destination answered the connection attempt with a reset.</summary>
    Refused = 4,

    /// <summary>The connector has no route to the destination, or its DNS server did not help.</summary>
    Unreachable = 5,

    /// <summary>Resolving or connecting took longer than the connector allows.</summary>
    Timeout = 6,

    /// <summary>The flow header was malformed or asked for something the connector does not do on a stream.</summary>
    ProtocolError = 7,
}
