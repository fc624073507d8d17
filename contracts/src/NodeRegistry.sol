// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title NodeRegistry: inference nodes, the operators behind them, and how to reach them.
/// @notice An operator registers a node address (the key the node signs receipts and settles with), its libp2p
///         peer id, HTTP endpoint, the base model it serves and its price policy. The operator can update the
///         endpoint/price and deregister; a node address is registered at most once at a time.
contract NodeRegistry {
    struct PricePolicy {
        uint128 pricePerToken; // wei of the payment token per generated token, on top of the adapter's price
        uint128 minFee; // minimum fee per request, in wei
    }

    struct Node {
        address operator;
        uint64 registeredAt;
        string peerId;
        string endpoint;
        string baseModel;
        PricePolicy price;
    }

    mapping(address => Node) private _nodes;
    uint256 public nodeCount;

    event NodeRegistered(
        address indexed node,
        address indexed operator,
        string peerId,
        string endpoint,
        string baseModel,
        uint128 pricePerToken,
        uint128 minFee
    );
    event NodeUpdated(address indexed node, string endpoint, uint128 pricePerToken, uint128 minFee);
    event NodeDeregistered(address indexed node, address indexed operator);

    error ZeroAddress();
    error EmptyField(string field);
    error AlreadyRegistered(address node);
    error UnknownNode(address node);
    error NotOperator(address node, address caller);

    /// @notice Register `node` operated by the caller.
    function register(
        address node,
        string calldata peerId,
        string calldata endpoint,
        string calldata baseModel,
        PricePolicy calldata price
    ) external {
        if (node == address(0)) revert ZeroAddress();
        if (bytes(peerId).length == 0) revert EmptyField("peerId");
        if (bytes(endpoint).length == 0) revert EmptyField("endpoint");
        if (bytes(baseModel).length == 0) revert EmptyField("baseModel");
        Node storage n = _nodes[node];
        if (n.operator != address(0)) revert AlreadyRegistered(node);
        n.operator = msg.sender;
        n.registeredAt = uint64(block.timestamp);
        n.peerId = peerId;
        n.endpoint = endpoint;
        n.baseModel = baseModel;
        n.price = price;
        ++nodeCount;
        emit NodeRegistered(node, msg.sender, peerId, endpoint, baseModel, price.pricePerToken, price.minFee);
    }

    /// @notice Change a node's endpoint and price policy (operator only).
    function update(address node, string calldata endpoint, PricePolicy calldata price) external {
        Node storage n = _operated(node);
        if (bytes(endpoint).length == 0) revert EmptyField("endpoint");
        n.endpoint = endpoint;
        n.price = price;
        emit NodeUpdated(node, endpoint, price.pricePerToken, price.minFee);
    }

    /// @notice Remove a node (operator only). The address can be registered again afterwards.
    function deregister(address node) external {
        Node storage n = _operated(node);
        address operator = n.operator;
        delete _nodes[node];
        --nodeCount;
        emit NodeDeregistered(node, operator);
    }

    function isRegistered(address node) external view returns (bool) {
        return _nodes[node].operator != address(0);
    }

    function getNode(address node) external view returns (Node memory) {
        Node storage n = _nodes[node];
        if (n.operator == address(0)) revert UnknownNode(node);
        return n;
    }

    function _operated(address node) private view returns (Node storage n) {
        n = _nodes[node];
        if (n.operator == address(0)) revert UnknownNode(node);
        if (n.operator != msg.sender) revert NotOperator(node, msg.sender);
    }
}
