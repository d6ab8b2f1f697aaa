using System.Net.Sockets;

namespace Ferry.Connector.Flows;

/// <summary>Socket errors in the words a flow refusal or a resource check gives them.</summary>
internal static class SocketErrors
{
    public static string Describe(SocketError error) => error switch
    {
        SocketError.ConnectionRefused => "connection refused",
        SocketError.HostUnreachable or SocketError.HostDown => "no route to host",
        SocketError.NetworkUnreachable or SocketError.NetworkDown => "network unreachable",
        SocketError.TimedOut => "connection timed out",
        SocketError.AddressFamilyNotSupported => "the connector host has no such address family",
        _ => error.ToString(),
    };
}
