using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

/// <summary>Two datagram muxes joined in memory, the stand-in for one QUIC connection's datagrams between a client and a connector.</summary>
internal static class InMemoryDatagrams
{
    /// <summary>Both ends take datagrams up to <paramref name="maxDatagram"/> bytes (a QUIC path's ~1200; 0 for none); delivery is lossless.</summary>
    public static (UdpDatagramMux Client, UdpDatagramMux Connector) CreatePair(int maxDatagram = 1200)
    {
        UdpDatagramMux? client = null;
        UdpDatagramMux? connector = null;
        client = new UdpDatagramMux(() => maxDatagram, datagram =>
        {
            connector!.Deliver(datagram.ToArray());
            return true;
        });
        connector = new UdpDatagramMux(() => maxDatagram, datagram =>
        {
            client.Deliver(datagram.ToArray());
            return true;
        });
        return (client, connector);
    }
}
