using System.Net;
using Ferry.Core.Flows;
using Ferry.Core.Model;

namespace Ferry.UnitTests.Model;

public sealed class PublicAddressesTests
{
    [Theory]
    [InlineData("8.8.8.8", true)]
    [InlineData("203.0.113.7", true)]
    [InlineData("10.1.2.3", false)]
    [InlineData("172.31.255.1", false)]
    [InlineData("172.32.0.1", true)]
    [InlineData("192.168.1.1", false)]
    [InlineData("100.64.0.1", false)]
    [InlineData("100.128.0.1", true)]
    [InlineData("127.0.0.1", false)]
    [InlineData("::ffff:10.0.0.1", false)]
    [InlineData("fd12::1", false)]
    [InlineData("2001:db8::1", true)]
    public void Addresses_are_public_outside_private_and_host_local_ranges(string address, bool expected)
        => Assert.Equal(expected, PublicAddresses.IsPublic(IPAddress.Parse(address)));

    [Theory]
    [InlineData("10.0.0.0/8", false)]
    [InlineData("10.20.0.0/16", false)]
    [InlineData("8.0.0.0/7", true)]
    [InlineData("0.0.0.0/0", true)]
    [InlineData("10.0.0.0/7", true)]
    [InlineData("203.0.113.5", true)]
    [InlineData("db.internal", false)]
    public void A_resource_is_public_when_any_of_its_addresses_is(string text, bool expected)
    {
        Assert.True(ResourceAddress.TryParse(text, out var address, out var error), error);
        Assert.Equal(expected, address.IsPublic);
    }
}
